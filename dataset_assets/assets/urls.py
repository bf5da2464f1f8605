"""Ingest: de-duplicate and filter the URL list, then cut it into shard inputs."""

import dataclasses

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets.shard_checks import replanned_evaluation
from dataset_assets.engine.runner import remove_shard
from dataset_assets.io.storage import OutputFolder
from dataset_assets.partitions import REGISTER_CHUNK, shards_partitions
from dataset_assets.planning import filter_urls, read_manifest, write_shard_inputs
from dataset_assets.reporting.markdown import inert
from dataset_assets.resources import DatasetResource, spec_storage_options

# Kept beside the plan so the dataset card can cite the filter counts.
FILTER_REPORT_NAME = "filter_report.json"


@dg.asset(group_name="ingest", kinds={"duckdb", "parquet"})
def filtered_urls(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> dg.MaterializeResult:
    """The input URL list, normalised, de-duplicated and filtered by the spec's rules (DuckDB)."""
    spec = dataset.spec()
    storage_options = spec_storage_options(spec, s3)
    report = filter_urls(
        spec.url_list,
        spec.input_format,
        spec.filtered_urls_path,
        spec.filter_settings(),
        storage_options=storage_options,
    )
    context.log.info(f"{report.rows_in} rows in, {report.rows_out} kept; removed: {report.removed}")
    OutputFolder(spec.plan_root, storage_options).write_json_atomic(
        FILTER_REPORT_NAME, dataclasses.asdict(report)
    )
    return dg.MaterializeResult(
        metadata={
            "rows_in": report.rows_in,
            "rows_out": report.rows_out,
            "dagster/row_count": report.rows_out,
            **{f"removed_{rule}": count for rule, count in report.removed.items()},
            "removed_by_rule": dg.MetadataValue.json(report.removed),
            "skipped_rules": dg.MetadataValue.json(report.skipped_rules),
            "top_domains": dg.MetadataValue.md(
                "| domain | rows |\n|---|---|\n"
                + "\n".join(f"| {inert(domain)} | {count} |" for domain, count in report.top_domains)
            ),
            "path": dg.MetadataValue.path(spec.filtered_urls_path),
        }
    )


@dg.asset(group_name="ingest", deps=[filtered_urls], kinds={"duckdb", "parquet"})
def url_shards(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> dg.MaterializeResult:
    """One parquet of ``number_sample_per_shard`` rows per shard, each registered as a partition.

    Idempotent: unchanged shard inputs are not rewritten and known keys are not re-added, so
    re-materialising after a partial download keeps every partition's history. After a re-plan,
    partitions beyond the new plan are removed with their downloaded files (their rows are no
    longer wanted: a denied domain must leave nothing behind), and shards whose rows changed
    are listed: the next backfill over them downloads them again (their stats record the old
    input's fingerprint, which the skip rule compares with the plan's).
    """
    spec = dataset.spec()
    storage_options = spec_storage_options(spec, s3)
    before = _planned_fingerprints(read_manifest(spec.shard_inputs_folder, storage_options))
    keys = write_shard_inputs(
        spec.filtered_urls_path,
        spec.shard_inputs_folder,
        spec.number_sample_per_shard,
        spec.oom_shard_count,
        storage_options=storage_options,
    )
    after = _planned_fingerprints(read_manifest(spec.shard_inputs_folder, storage_options))
    changed = sorted(k for k in keys if k in before and before[k] != after.get(k))
    existing = set(context.instance.get_dynamic_partitions(shards_partitions.name))
    new = [key for key in keys if key not in existing]
    for start in range(0, len(new), REGISTER_CHUNK):
        context.instance.add_dynamic_partitions(shards_partitions.name, new[start : start + REGISTER_CHUNK])
    stale = sorted(existing - set(keys))
    output = OutputFolder(spec.output_folder, storage_options)
    options = spec.download_options()
    for key in stale:
        context.instance.delete_dynamic_partition(shards_partitions.name, key)
        removed = remove_shard(output, int(key), options)
        if removed:
            context.log.info(f"shard {key} is beyond the plan: deleted {', '.join(removed)}")
    if stale:
        context.log.warning(f"removed {len(stale)} partition(s) no longer in the plan, e.g. {stale[:5]}")
    for key in changed:
        if key in existing:  # its partition may show as materialized: say it is not current
            evaluation = replanned_evaluation(key, before[key], after.get(key))
            context.instance.report_runless_asset_event(evaluation)
    if changed:
        context.log.warning(
            f"{len(changed)} shard input(s) changed by this plan, e.g. {changed[:5]}: "
            "a backfill over them downloads them again"
        )
    return dg.MaterializeResult(
        metadata={
            "num_shards": len(keys),
            "new_shards": len(new),
            "removed_shards": len(stale),
            "changed_shards": len(changed),
            "changed_shard_keys": dg.MetadataValue.json(changed[:100]),
            "shard_inputs": dg.MetadataValue.path(spec.shard_inputs_folder),
        }
    )


def _planned_fingerprints(manifest: dict | None) -> dict[str, str | None]:
    """Shard key -> the fingerprint its input had, per a planner manifest."""
    entries = (manifest or {}).get("shards", [])
    return {e["key"]: e.get("fingerprint") for e in entries if isinstance(e, dict) and "key" in e}
