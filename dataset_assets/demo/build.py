"""Materialise the whole graph in-process, one run per shard, like a backfill would.

Import this only after ``DATASET_SPEC`` and ``DAGSTER_HOME`` are set: the definitions read the
spec at import time and the runs are recorded in the instance ``dagster dev`` will show.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from dataset_assets.definitions import defs
from dataset_assets.partitions import shards_partitions

INGEST = [dg.AssetKey("filtered_urls"), dg.AssetKey("url_shards")]
DOWNLOAD = [dg.AssetKey("image_shards")]
PUBLISH = [dg.AssetKey("dataset_verification"), dg.AssetKey("dataset_card")]


@dataclass
class BuildOutcome:
    shards: int
    rows: int
    images: int
    checks_passed: bool
    failed_checks: str

    @property
    def success_rate(self) -> float:
        return self.images / self.rows if self.rows else 0.0


def build_dataset(instance: dg.DagsterInstance | None = None) -> BuildOutcome:
    instance = instance or dg.DagsterInstance.get()
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=INGEST)
    keys = instance.get_dynamic_partitions(shards_partitions.name)
    rows = images = 0
    for key in keys:
        result = job.execute_in_process(instance=instance, asset_selection=DOWNLOAD, partition_key=key)
        metadata = result.asset_materializations_for_node("image_shards")[0].metadata
        rows += metadata["count"].value
        images += metadata["successes"].value
    result = job.execute_in_process(instance=instance, asset_selection=PUBLISH, raise_on_error=False)
    evaluations = result.get_asset_check_evaluations()
    failed = sorted(e.check_name for e in evaluations if not e.passed)
    return BuildOutcome(len(keys), rows, images, result.success and not failed, ", ".join(failed))
