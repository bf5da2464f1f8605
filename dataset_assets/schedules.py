"""Keep downloading missing or failed shards without anyone clicking.

``image_shards`` also carries ``AutomationCondition.on_missing()`` guarded by
``~in_progress()`` (new partitions are requested once when the automation sensor runs, never
while a run has them); this schedule is the retry loop for shards whose run failed (a failed
gate included), which on_missing does not request again.
"""

from collections.abc import Sequence

import dagster as dg

from dataset_assets.assets.shards import image_shards
from dataset_assets.partitions import partition_ranges, range_tags, shards_partitions, shards_per_run

# A bounded number of run requests per tick keeps the tick fast and the run queue sane.
MAX_REQUESTS_PER_TICK = 500

download_shards_job = dg.define_asset_job(
    "download_shards",
    selection=dg.AssetSelection.assets(image_shards),
    executor_def=dg.in_process_executor,
)


def missing_shard_keys(instance: dg.DagsterInstance, keys: Sequence[str] | None = None) -> list[str]:
    """Registered shards (or ``keys``) with no successful materialization and no run in progress."""
    if keys is None:
        keys = instance.get_dynamic_partitions(shards_partitions.name)
    statuses = instance.get_status_by_partition(image_shards.key, keys, shards_partitions)
    return [key for key in keys if statuses.get(key) in (None, dg.AssetPartitionStatus.FAILED)]


@dg.schedule(
    job=download_shards_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED
)
def resume_missing_shards(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    """Every 15 minutes, request runs for the shards that are missing or failed.

    Consecutive missing shards share a run (up to the spec's ``shards_per_run``), as in a backfill.
    """
    keys = context.instance.get_dynamic_partitions(shards_partitions.name)
    missing = missing_shard_keys(context.instance, keys)
    if not missing:
        return dg.SkipReason("every registered shard is materialized or in progress")
    per_run = shards_per_run(context.repository_def.assets_defs_by_key[image_shards.key])
    tick = f"{context.scheduled_execution_time:%Y%m%d%H%M}"
    return [
        dg.RunRequest(run_key=f"{tick}-{first}-{last}", tags=range_tags(first, last))
        for first, last in partition_ranges(keys, set(missing), per_run)[:MAX_REQUESTS_PER_TICK]
    ]
