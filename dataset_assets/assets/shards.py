"""Download: one partition per shard; a run downloads its partitions with one engine call."""

import posixpath
from collections.abc import Callable, Iterator

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets import figures
from dataset_assets.assets.shard_checks import INPUT_CHECK, SHARD_CHECKS, current_evaluation
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
from dataset_assets.engine.shards.gates import ShardGates
from dataset_assets.engine.shards.layout import STATS_SUFFIX, parquet_name, shard_name, stats_name
from dataset_assets.engine.stats import ShardStats
from dataset_assets.io.storage import OutputFolder, filesystem, full_url, read_parquet
from dataset_assets.partitions import shards_partitions
from dataset_assets.resources import DatasetResource, spec_storage_options


@dg.asset(
    group_name="download",
    partitions_def=shards_partitions,
    deps=[url_shards],
    kinds={"python", "parquet"},
    check_specs=SHARD_CHECKS,
    # What the UI shows (the docstring below is for whoever reads the code).
    description=(
        "The downloaded dataset, one partition per shard: the images resized and written with "
        "their captions and metadata (tar/parquet/files per output_format) and a stats file. A "
        "shard below success_rate_floor, or failing any shard_* check, is a failed partition and "
        "is downloaded again by the next backfill; a complete shard is never downloaded twice. "
        "shard_input_current fails for a partition whose input a re-plan changed."
    ),
    # A run whose shards are all complete and already reported yields no materialization (see
    # _is_reported), so downstream assets do not turn "unsynced" after a no-op resume.
    output_required=False,
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
    over all partitions doubles as a cheap "resume what is missing". Such a shard whose latest
    materialization already records the same input fingerprint and commit time gets no new
    materialization (the asset's output is optional): a no-op resume writes no event, and
    ``dataset_verification`` stays in sync. A shard complete on disk but not so recorded (a
    fresh instance over an existing folder, a re-planned partition) is materialized as usual.

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
    complete: dict[str, ShardStats] = {}
    for shard_id, key in keys.items():
        if already_done(output, shard_id, options, fingerprints[shard_id]):
            complete[key] = read_shard_stats(output, shard_id, options)
            continue
        state = shard_completion(output, shard_id, options, fingerprints[shard_id])
        if state in WHY_AGAIN:
            context.log.warning(f"shard {key} {WHY_AGAIN[state]}")
        todo.append(shard_id)
    unchanged: dict[str, ShardStats] = {}
    reported = _reported_partitions(context, list(complete)) if complete else {}
    for key, stats in complete.items():
        if _is_reported(reported.get(key), stats, fingerprints[stats.shard_id]):
            context.log.info(f"shard {key} already complete and materialized as it is: nothing new")
            unchanged[key] = stats
        else:
            context.log.info(f"shard {key} already complete; not downloading it again")
            done[key] = stats

    def describe(stats: ShardStats) -> dict[str, object]:
        stats_file = output.url_of(stats_name(shard_name(stats.shard_id, spec.oom_shard_count)))
        return shard_metadata(stats, output, fingerprints.get(stats.shard_id), stats_file)

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
        yield from _report(context, done, unchanged, describe, whole_run=False)
        raise
    yield from _report(context, done, unchanged, describe, whole_run=True)
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
    context: dg.AssetExecutionContext,
    done: dict[str, ShardStats],
    unchanged: dict[str, ShardStats],
    describe: Callable[[ShardStats], dict[str, object]],
    whole_run: bool,
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output[None]]:
    """Materializations for the partitions that passed, then every partition's gate outcomes.

    One ``MaterializeResult`` (with per-partition metadata) when the whole run passed and every
    partition is new; otherwise one ``AssetMaterialization`` per passing partition, so the
    others are left unmaterialized. ``unchanged`` partitions (complete, and their latest
    materialization already records these very files) get nothing in a run that succeeds; in
    a run that fails they are reported again: Dagster marks every partition a failed run planned
    and did not materialize as failed, and an unchanged shard is not a failed one.
    """
    if not whole_run or any(stats.passed_gates is False for stats in done.values()):
        done = {**unchanged, **done}
    passed = {key: stats for key, stats in done.items() if stats.passed_gates is not False}
    if whole_run and len(passed) == len(done) == len(context.partition_keys):
        for key, stats in passed.items():
            context.add_asset_metadata(describe(stats), partition_key=key)
        yield dg.MaterializeResult()
    else:
        for key, stats in passed.items():
            yield dg.AssetMaterialization(
                asset_key=context.asset_key, partition=key, metadata=describe(stats)
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
        if INPUT_CHECK in selected:
            yield current_evaluation(key, stats.input_fingerprint)
    # Each check's op output, once per run (an AssetCheckResult would yield it; these are
    # evaluations because they name their partition).
    for check_key in selected.values():
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))


def _reported_partitions(
    context: dg.AssetExecutionContext, keys: list[str]
) -> dict[str, dg.AssetMaterialization]:
    """The latest materialization of each of ``keys`` that Dagster does not hold failed.

    A partition Dagster holds failed (a run planned it and failed without materializing it) is
    left out: only a new materialization clears that, whatever is on disk. The failed set is
    read from the instance's partition-status cache, the one the UI shows: the public
    ``get_status_by_partition`` reports this run's partitions as in progress, hiding an earlier
    failure that outlives this run. Should that private API move, every partition is treated
    as failed, i.e. reported again (a spare event, never a missing one).
    """
    try:
        from dagster._core.storage.partition_status_cache import (
            AssetStatusCacheValue,
            get_and_update_asset_status_cache_value,
        )

        partitions_def = context.assets_def.partitions_def
        cached = get_and_update_asset_status_cache_value(context.instance, context.asset_key, partitions_def)
        if not isinstance(cached, AssetStatusCacheValue):
            return {}
        failed = set(cached.deserialize_failed_partition_subsets(partitions_def).get_partition_keys())
    except Exception as error:  # any change there costs a spare event, never a missing one
        context.log.debug(f"partition status unavailable ({error}); reporting every partition")
        return {}
    latest = {}
    for key in keys:
        if key in failed:
            continue
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
        ).records
        if records and records[0].asset_materialization is not None:
            latest[key] = records[0].asset_materialization
    return latest


def _is_reported(
    materialization: dg.AssetMaterialization | None, stats: ShardStats, fingerprint: str | None
) -> bool:
    """Whether a materialization describes these very shard files: same input, same commit."""
    if materialization is None or stats.end_time <= 0:
        return False
    recorded = materialization.metadata
    wanted = fingerprint or stats.input_fingerprint
    fingerprint_value = recorded.get("input_fingerprint")
    written_value = recorded.get("written_at")
    return (
        wanted is not None
        and fingerprint_value is not None
        and fingerprint_value.value == wanted
        and written_value is not None
        and written_value.value == stats.end_time
    )


def shard_metadata(
    stats: ShardStats,
    output: OutputFolder | None = None,
    input_fingerprint: str | None = None,
    stats_file: str | None = None,
) -> dict[str, object]:
    """A partition's metadata: the charted figures first, then values for reading.

    Charted (numbers; the UI draws one chart per key, keys in alphabetical order, see
    assets/figures.py): success rate, images stored per second, images stored, failures by
    stage, opt-outs. Everything else is text with its unit, a path, a table or a timestamp, so
    it does not push the charts that matter down the page. No ``dagster/row_count``: the asset
    page shows the latest materialization's as the asset's "Row count", and one shard's count
    is not the dataset's (``dataset_verification`` carries the dataset's).
    """
    failures = {message: n for message, n in stats.status_dict.items() if message != "success"}
    files = [_file_url(output, path) for path in stats.files]
    sizes = {posixpath.basename(name): size for name, size in stats.file_sizes.items()}
    metadata: dict[str, object] = {
        "success_rate": figures.rate(stats.success_rate),
        "images_per_sec": figures.speed(stats.images_per_sec),
        "successes": stats.successes,
        "failed_to_download": stats.failed_to_download,
        "failed_to_resize": stats.failed_to_resize,
        # The consent ledger: rows refused by each opt-out signal (outages are not counted).
        "opted_out": sum(stats.opt_outs.values()),
        "failures": figures.failures_table(failures, stats.count),
        "count": figures.count_text(stats.count, "rows"),
        "duration": figures.seconds(stats.duration),
        "bytes_written": dg.MetadataValue.text(figures.human_bytes(stats.bytes_written)),
        "bytes_downloaded": dg.MetadataValue.text(figures.human_bytes(stats.bytes_downloaded)),
        "already_complete": stats.skipped,
        "opt_outs": dg.MetadataValue.json(dict(sorted(stats.opt_outs.items()))),
        "files": figures.files_table((path, sizes.get(posixpath.basename(path))) for path in files),
    }
    if stats_file is None:
        stats_file = next((path for path in files if path.endswith(STATS_SUFFIX)), None)
    if stats_file is not None:
        metadata["stats_file"] = dg.MetadataValue.path(stats_file)
    fingerprint = input_fingerprint or stats.input_fingerprint
    if fingerprint is not None:
        metadata["input_fingerprint"] = dg.MetadataValue.text(fingerprint)
    if stats.end_time > 0:
        # When the shard was committed: with the fingerprint, what tells a later run that this
        # materialization describes the files on disk (see _is_reported).
        metadata["written_at"] = dg.MetadataValue.timestamp(stats.end_time)
    return metadata


def _file_url(output: OutputFolder | None, path: str) -> str:
    return full_url(output.fs, path) if output is not None else path
