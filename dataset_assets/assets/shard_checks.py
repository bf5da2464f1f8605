"""The checks of ``image_shards`` partitions, declared apart so that ``url_shards`` can report one.

Why ``url_shards`` reports on a partition of another asset: a re-plan changes a shard's input
after its partition was materialized, and Dagster keeps showing that partition materialized
(open-source storages cannot wipe one partition's history). So the plan itself fails the
partition's ``shard_input_current`` check, a run-less evaluation the partition's page shows
until the next download of that shard passes it again.
"""

import dagster as dg

from dataset_assets.engine.shards.gates import GATES
from dataset_assets.partitions import shards_partitions

SHARDS_ASSET = dg.AssetKey("image_shards")
INPUT_CHECK = "shard_input_current"
INPUT_CHECK_DESCRIPTION = (
    "The shard was built from the plan's current input; a re-planned shard fails it until it is "
    "downloaded again."
)

# The gates are blocking: a partition that fails one is not reported materialized, and its run
# fails, so Dagster marks it failed and "failed and missing" backfills redo it. The input check
# is not: what it reports about a materialized partition comes after that partition's run.
SHARD_CHECKS = [
    dg.AssetCheckSpec(
        name, asset=SHARDS_ASSET, description=description, blocking=True, partitions_def=shards_partitions
    )
    for name, description in GATES.items()
] + [
    dg.AssetCheckSpec(
        INPUT_CHECK, asset=SHARDS_ASSET, description=INPUT_CHECK_DESCRIPTION, partitions_def=shards_partitions
    )
]


def _input_evaluation(key: str, passed: bool, description: str, **metadata: str) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=SHARDS_ASSET,
        check_name=INPUT_CHECK,
        passed=passed,
        partition=key,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def replanned_evaluation(key: str, old: str | None, new: str | None) -> dg.AssetCheckEvaluation:
    """The failed input check of a partition whose shard input a re-plan changed."""
    return _input_evaluation(
        key,
        False,
        f"shard {key} was re-planned: its input changed, so its files hold rows the plan no longer "
        "has; a backfill over this partition downloads it again",
        planned_input=str(new),
        previous_input=str(old),
    )


def current_evaluation(key: str, fingerprint: str | None) -> dg.AssetCheckEvaluation:
    """The passed input check of a partition whose shard was built from the plan's input."""
    return _input_evaluation(
        key, True, f"built from the plan's current input ({fingerprint})", planned_input=str(fingerprint)
    )
