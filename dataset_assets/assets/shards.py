"""Download: one partition per shard; a run downloads its partitions with one engine call."""

import posixpath
from collections.abc import Iterator

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets.urls import url_shards
from dataset_assets.engine.fingerprint import footer_fingerprint
from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.runner import (
    WHY_AGAIN,
    already_done,
    download_shards,
    read_shard_stats,
    shard_completion,
)
from dataset_assets.engine.shards.gates import GATES, ShardGates
from dataset_assets.engine.shards.layout import parquet_name, shard_name
from dataset_assets.engine.stats import ShardStats
from dataset_assets.io.storage import OutputFolder, filesystem, read_parquet
from dataset_assets.partitions import shards_partitions
from dataset_assets.resources import DatasetResource, spec_storage_options

# Blocking and partitioned: a partition that fails one is not reported materialized, and its
# run fails, so Dagster marks it failed and "failed and missing" backfills redo it.
SHARD_CHECKS = [
    dg.AssetCheckSpec(
        name, asset="image_shards", description=description, blocking=True, partitions_def=shards_partitions
    )
    for name, description in GATES.items()
]


@dg.asset(
    group_name="download",
    partitions_def=shards_partitions,
    deps=[url_shards],
    kinds={"python", "parquet"},
    check_specs=SHARD_CHECKS,
    # Never start a partition a run is already downloading (that run would lose the shard's
    # lease to nobody: the second writer would fail at once, but a run is a run).
    automation_condition=dg.AutomationCondition.on_missing() & ~dg.AutomationCondition.in_progress(),
)
def image_shards(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output[None]]:
    """Fetch, resize and write shards (tar + parquet + stats), one partition per shard.

    A run may cover several partitions (a backfill groups up to the spec's ``shards_per_run``,
    which ``build_defs`` makes the BackfillPolicy). They share one worker pool, so Dagster's
    start-up and the pool's are paid once and each shard's slowest requests overlap the next
    one's; every partition still gets its own metadata. A shard already complete on disk is
    reported, not downloaded again (unless ``incremental_mode`` says otherwise), so a backfill
    over all partitions doubles as a cheap "resume what is missing".

    Each shard's gates (``shard_*`` checks, judged by the writer, see engine/shards/gates.py)
    are reported per partition. When one fails, only the passing partitions are reported
    materialized and the run fails, so the failing ones end as failed partitions; their files
    stay, but the stats record ``passed_gates: false`` and the next run downloads them again.
    ``AssetCheckEvaluation`` is yielded rather than ``AssetCheckResult``: the latter takes the
    partition from the step, which a run of a partition range does not have.
    """
    spec = dataset.spec()
    options = spec.download_options()
    gates = ShardGates(success_rate_floor=spec.success_rate_floor)
    storage_options = spec_storage_options(spec, s3)
    output = OutputFolder(spec.output_folder, storage_options)
    keys = {int(key): key for key in context.partition_keys}
    done: dict[str, ShardStats] = {}
    plan_fs, plan_root = filesystem(spec.shard_inputs_folder, storage_options)
    fingerprints: dict[int, str | None] = {}
    for shard_id, key in keys.items():
        footer = footer_fingerprint(plan_fs, posixpath.join(plan_root, parquet_name(key)))
        if footer is None:
            raise dg.Failure(
                f"shard {key} has no shard input in {spec.shard_inputs_folder}: it is not in the "
                "current plan (re-materialise url_shards, which removes partitions beyond the plan)"
            )
        fingerprints[shard_id] = footer[1]
    todo = []
    for shard_id, key in keys.items():
        if already_done(output, shard_id, options, fingerprints[shard_id]):
            context.log.info(f"shard {key} already complete; not downloading it again")
            done[key] = read_shard_stats(output, shard_id, options)
            continue
        state = shard_completion(output, shard_id, options, fingerprints[shard_id])
        if state in WHY_AGAIN:
            context.log.warning(f"shard {key} {WHY_AGAIN[state]}")
        todo.append(shard_id)

    def inputs() -> Iterator[InputShard]:
        # Consumed by the pool's feeder thread, lazily: one shard's rows at a time.
        for shard_id in todo:
            name = shard_name(shard_id, spec.oom_shard_count)
            path = posixpath.join(spec.shard_inputs_folder, parquet_name(name))
            yield InputShard(shard_id, read_parquet(path, storage_options), fingerprints[shard_id])

    try:
        if todo:
            names = ", ".join(keys[shard_id] for shard_id in todo)
            context.log.info(f"downloading shard(s) {names} with {options.processes_count} processes")
            for stats in download_shards(inputs(), output, options, gates):
                key = keys[stats.shard_id]
                context.log.info(
                    f"shard {key}: {stats.successes}/{stats.count} images in {stats.duration:.1f}s"
                )
                done[key] = stats
    except BaseException:
        # Shards committed before the failure are still reported (their partitions succeed).
        yield from _report(context, done, whole_run=False)
        raise
    yield from _report(context, done, whole_run=True)
    failed = {key: stats for key, stats in done.items() if stats.passed_gates is False}
    if failed:
        lines = [
            f"{key}: {name}: {gate['summary']}"
            for key, stats in sorted(failed.items())
            for name, gate in stats.gates.items()
            if not gate["passed"]
        ]
        raise dg.Failure(
            description=f"{len(failed)} shard(s) failed their blocking checks and are left to be "
            "downloaded again:\n" + "\n".join(lines),
        )


def _report(
    context: dg.AssetExecutionContext, done: dict[str, ShardStats], whole_run: bool
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output[None]]:
    """Materializations for the partitions that passed, then every partition's gate outcomes.

    One ``MaterializeResult`` (with per-partition metadata) when the whole run passed; otherwise
    one ``AssetMaterialization`` per passing partition, so the others are left unmaterialized.
    """
    passed = {key: stats for key, stats in done.items() if stats.passed_gates is not False}
    if whole_run and len(passed) == len(done) == len(context.partition_keys):
        for key, stats in passed.items():
            context.add_asset_metadata(shard_metadata(stats), partition_key=key)
        yield dg.MaterializeResult()
    else:
        for key, stats in passed.items():
            yield dg.AssetMaterialization(
                asset_key=context.asset_key, partition=key, metadata=shard_metadata(stats)
            )
    selected = {key.name: key for key in context.selected_asset_check_keys}
    for key, stats in done.items():
        for name, gate in stats.gates.items():
            if name in selected:
                yield dg.AssetCheckEvaluation(
                    asset_key=context.asset_key,
                    check_name=name,
                    passed=bool(gate["passed"]),
                    partition=key,
                    blocking=True,
                    description=gate["summary"],
                    metadata={"count": stats.count, "successes": stats.successes},
                )
    # Each check's op output, once per run (an AssetCheckResult would yield it; these are
    # evaluations because they name their partition).
    for check_key in selected.values():
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))


def shard_metadata(stats: ShardStats) -> dict[str, object]:
    """Numeric values are plotted per partition by the UI; the table lists failure reasons."""
    failures = [(message, n) for message, n in stats.status_dict.items() if message != "success"]
    return {
        "count": stats.count,
        "successes": stats.successes,
        "failed_to_download": stats.failed_to_download,
        "failed_to_resize": stats.failed_to_resize,
        "success_rate": dg.MetadataValue.float(stats.success_rate),
        "images_per_sec": dg.MetadataValue.float(stats.images_per_sec),
        "duration_s": dg.MetadataValue.float(stats.duration),
        "bytes_written": stats.bytes_written,
        "bytes_downloaded": stats.bytes_downloaded,
        "already_complete": stats.skipped,
        "dagster/row_count": stats.successes,
        "failures": dg.MetadataValue.table(
            records=[dg.TableRecord({"error": m, "count": n}) for m, n in failures[:50]],
            schema=dg.TableSchema(
                columns=[dg.TableColumn("error", "string"), dg.TableColumn("count", "int")]
            ),
        ),
        "files": dg.MetadataValue.json(stats.files),
        # The consent ledger: rows refused by each opt-out signal (outages are not counted).
        "opted_out": sum(stats.opt_outs.values()),
        "opt_outs": dg.MetadataValue.json(dict(sorted(stats.opt_outs.items()))),
    }
