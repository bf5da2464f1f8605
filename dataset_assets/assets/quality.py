"""Verify: a roll-up of the shards' stats plus a deep sample, judged by asset checks.

The asset reads one small stats file per shard and decodes a fixed sample of images
(reporting/verify.py), so its cost does not grow with the number of images; it stores the
report. Each check judges the current state, never an old report: in the run that wrote the
report it reads that report (the state the asset saw a moment ago); in any other run (checks
launched alone, say after a stats file was deleted) the roll-up is computed again, once per run
however many checks ask. Checks whose failure makes the dataset unusable are blocking: the run
fails and the dataset card is not written.
"""

from collections import OrderedDict

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets import figures
from dataset_assets.assets.shards import image_shards
from dataset_assets.engine.shards.layout import VERIFICATION_REPORT
from dataset_assets.engine.shards.sample_counts import publish_sample_counts
from dataset_assets.io.storage import OutputFolder
from dataset_assets.partitions import shards_partitions
from dataset_assets.reporting.verify import VerificationReport, verify_dataset
from dataset_assets.resources import DatasetResource, spec_storage_options

REPORT_NAME = VERIFICATION_REPORT  # under _reports/: the output root keeps only shard files
# Reports by run id, so the checks of one run share one roll-up (in-process executor: the
# asset and its checks run in one process). A run on another executor reads the report file,
# or verifies again per check: slower, still current.
_RUN_REPORTS: OrderedDict[str, VerificationReport] = OrderedDict()
_RUNS_KEPT = 4


def _output(dataset: DatasetResource, s3: S3Resource) -> OutputFolder:
    spec = dataset.spec()
    return OutputFolder(spec.output_folder, spec_storage_options(spec, s3))


def verify_current_state(
    instance: dg.DagsterInstance, dataset: DatasetResource, s3: S3Resource
) -> VerificationReport:
    """Every registered shard's stats against the plan, and a deep sample of images, now."""
    spec = dataset.spec()
    return verify_dataset(
        _output(dataset, s3),
        sorted(instance.get_dynamic_partitions(shards_partitions.name)),
        spec.download_options(),
        shard_inputs_folder=spec.shard_inputs_folder,
        success_rate_floor=spec.success_rate_floor,
        storage_options=spec_storage_options(spec, s3),
        full_checksums=spec.verify_full_checksums,
    )


def _remember(run_id: str, report: VerificationReport) -> None:
    _RUN_REPORTS[run_id] = report
    _RUN_REPORTS.move_to_end(run_id)
    while len(_RUN_REPORTS) > _RUNS_KEPT:
        _RUN_REPORTS.popitem(last=False)


@dg.asset(group_name="verify", deps=[image_shards], kinds={"python"})
def dataset_verification(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> dg.MaterializeResult:
    """Roll up every registered shard's stats against the plan; decode a deep sample of images."""
    spec = dataset.spec()
    report = verify_current_state(context.instance, dataset, s3)
    report.run_id = context.run.run_id
    output = _output(dataset, s3)
    output.write_json_atomic(REPORT_NAME, report.to_json())
    _remember(context.run.run_id, report)
    # Runs ending together may each have missed the other's last shards: the roll-up settles it.
    publish_sample_counts(output, spec.download_options())
    return dg.MaterializeResult(metadata=verification_metadata(report, output.url_of(REPORT_NAME)))


def verification_metadata(report: VerificationReport, report_path: str | None = None) -> dict[str, object]:
    """The dataset's totals: charted figures first, then values for reading (assets/figures.py).

    ``dagster/row_count`` (images stored) and ``dagster/size_bytes`` (bytes written) are the
    dataset's, so the asset page's "Row count" and "Storage" describe the whole dataset; they
    are charted too (by time), like the other numbers: rows, images, success rate, shards
    complete and expected, opt-outs. ``rows`` and ``successes`` keep their names (the demo and
    tools read them).
    """
    failed = sorted(name for name, outcome in report.checks.items() if not outcome.passed)
    metadata: dict[str, object] = {
        "success_rate": figures.rate(report.success_rate),
        "successes": report.successes,
        "rows": report.rows,
        "shards_complete": report.shards_complete,
        "shards_expected": report.shards_expected,
        "opted_out": sum(report.opt_outs.values()),
        "dagster/row_count": report.successes,
        "dagster/size_bytes": report.bytes_written,
        "failures": figures.failures_table(report.failure_reasons, report.rows),
        "bytes_written": dg.MetadataValue.text(figures.human_bytes(report.bytes_written)),
        "bytes_downloaded": dg.MetadataValue.text(figures.human_bytes(report.bytes_downloaded)),
        "checks_failed": dg.MetadataValue.text(", ".join(failed) or "none"),
        "deep_sample": dg.MetadataValue.text(
            f"{report.samples_decoded:,} images decoded from {report.shards_sampled:,} shards; "
            f"sha256 of {report.shards_hashed:,} shards ({figures.human_bytes(report.bytes_hashed)})"
        ),
        "opt_outs": dg.MetadataValue.json(dict(sorted(report.opt_outs.items()))),
    }
    if report_path is not None:
        metadata["report"] = dg.MetadataValue.path(report_path)
    return metadata


def current_report(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> VerificationReport:
    """This run's report if this run wrote one; otherwise the current state, verified now."""
    run_id = context.run.run_id
    if run_id in _RUN_REPORTS:
        return _RUN_REPORTS[run_id]
    output = _output(dataset, s3)
    saved = None
    if output.exists(REPORT_NAME):
        try:
            saved = VerificationReport.from_json(output.read_json(REPORT_NAME))
        except (OSError, ValueError, TypeError) as error:
            context.log.warning(f"{REPORT_NAME} is unreadable ({error}); verifying again")
    if saved is not None and saved.run_id == run_id:
        report = saved
    else:
        context.log.info("no report from this run: verifying the shards as they are now")
        report = verify_current_state(context.instance, dataset, s3)
    _remember(run_id, report)
    return report


def _check(name: str, description: str, blocking: bool) -> dg.AssetChecksDefinition:
    severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN

    @dg.asset_check(asset=dataset_verification, name=name, description=description, blocking=blocking)
    def _evaluate(
        context: dg.AssetCheckExecutionContext, dataset: DatasetResource, s3: S3Resource
    ) -> dg.AssetCheckResult:
        outcome = current_report(context, dataset, s3).checks[name]
        return dg.AssetCheckResult(
            passed=outcome.passed,
            severity=severity,
            description=outcome.summary,
            metadata={
                "problem_count": outcome.problem_count,
                "problems": dg.MetadataValue.json(outcome.problems),
            },
        )

    return _evaluate


verification_checks = [
    _check(
        "shards_complete",
        "Every registered shard has readable stats, built from the plan's current input.",
        blocking=True,
    ),
    _check("rows_match_inputs", "Each shard has one row per input row.", blocking=True),
    _check(
        "samples_decode",
        "A deep sample of stored images decodes, with the size its metadata states.",
        blocking=True,
    ),
    _check("keys_unique", "Each shard's keys lie in its own range, so keys are unique.", blocking=True),
    _check(
        "checksums_match",
        "Every shard file has the size recorded when written; sampled shards' sha256 match.",
        blocking=True,
    ),
    _check(
        "shards_in_plan",
        "Every registered shard, and every shard in the output folder, is in the plan.",
        blocking=True,
    ),
    _check("success_rate", "The dataset's success rate is at least success_rate_floor.", blocking=False),
]
