"""The one partitions definition: a dynamic partition per shard (keys 00000, 00001, ...).

Dynamic rather than static because the number of shards is known only after the URL list
has been de-duplicated and filtered; ``url_shards`` registers them.
"""

from collections.abc import Collection, Sequence

import dagster as dg

SHARDS = "shards"
shards_partitions = dg.DynamicPartitionsDefinition(name=SHARDS)

# add_dynamic_partitions sends all keys in one SQL statement; SQLite caps its variables.
REGISTER_CHUNK = 10_000


# The run tags Dagster's own backfills use to give one run a range of partitions.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_ranges(
    keys: Sequence[str], wanted: Collection[str], max_per_run: int | None
) -> list[tuple[str, str]]:
    """(first, last) of each run of consecutive wanted keys, at most ``max_per_run`` long (None: any).

    ``keys`` in partition order; a range never spans an unwanted key, because a run covers
    every partition between its first and last (an unwanted one may be materialised or running).
    """
    ranges: list[tuple[str, str]] = []
    current: list[str] = []
    for key in keys:
        if key in wanted:
            current.append(key)
        if current and (key not in wanted or len(current) == (max_per_run or -1)):
            ranges.append((current[0], current[-1]))
            current = []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run materialise the partitions first..last."""
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def shards_per_run(assets_def: dg.AssetsDefinition) -> int | None:
    """The most partitions one run of ``assets_def`` covers, per its BackfillPolicy (None: all)."""
    policy = assets_def.backfill_policy
    return policy.max_partitions_per_run if policy is not None else 1
