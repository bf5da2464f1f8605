"""Verify: a roll-up of the shards' stats plus a deep sample, judged by asset checks.

The asset reads one small stats file per shard and decodes a fixed sample of images
(reporting/verify.py), so its cost does not grow with the number of images; it stores the
report, and each check reads the report of the same run. Checks whose failure makes the dataset
unusable are blocking: the run fails and the dataset card is not written.
"""

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets.shards import image_shards
from dataset_assets.engine.shards.layout import VERIFICATION_REPORT
from dataset_assets.engine.shards.sample_counts import publish_sample_counts
from dataset_assets.io.storage import OutputFolder
from dataset_assets.partitions import shards_partitions
from dataset_assets.reporting.verify import VerificationReport, verify_dataset
from dataset_assets.resources import DatasetResource, spec_storage_options

REPORT_NAME = VERIFICATION_REPORT  # under _reports/: the output root keeps only shard files


@dg.asset(group_name="verify", deps=[image_shards], kinds={"python"})
def dataset_verification(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> dg.MaterializeResult:
    """Roll up every registered shard's stats against the plan; decode a deep sample of images."""
    spec = dataset.spec()
    storage_options = spec_storage_options(spec, s3)
    keys = sorted(context.instance.get_dynamic_partitions(shards_partitions.name))
    report = verify_dataset(
        spec.output_folder,
        keys,
        spec.download_options(),
        shard_inputs_folder=spec.shard_inputs_folder,
        success_rate_floor=spec.success_rate_floor,
        storage_options=storage_options,
        full_checksums=spec.verify_full_checksums,
    )
    output = OutputFolder(spec.output_folder, storage_options)
    output.write_json_atomic(REPORT_NAME, report.to_json())
    # Runs ending together may each have missed the other's last shards: the roll-up settles it.
    publish_sample_counts(output, spec.download_options())
    return dg.MaterializeResult(
        metadata={
            "shards_expected": report.shards_expected,
            "shards_complete": report.shards_complete,
            "rows": report.rows,
            "successes": report.successes,
            "success_rate": dg.MetadataValue.float(report.success_rate),
            "samples_decoded": report.samples_decoded,
            "shards_sampled": report.shards_sampled,
            "shards_hashed": report.shards_hashed,
            "bytes_hashed": report.bytes_hashed,
            "opted_out": sum(report.opt_outs.values()),
            "opt_outs": dg.MetadataValue.json(dict(sorted(report.opt_outs.items()))),
            "checks_failed": dg.MetadataValue.json(
                sorted(name for name, outcome in report.checks.items() if not outcome.passed)
            ),
        }
    )


def load_report(dataset: DatasetResource, s3: S3Resource) -> VerificationReport:
    spec = dataset.spec()
    output = OutputFolder(spec.output_folder, spec_storage_options(spec, s3))
    return VerificationReport.from_json(output.read_json(REPORT_NAME))


def _check(name: str, description: str, blocking: bool) -> dg.AssetChecksDefinition:
    severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN

    @dg.asset_check(asset=dataset_verification, name=name, description=description, blocking=blocking)
    def _evaluate(dataset: DatasetResource, s3: S3Resource) -> dg.AssetCheckResult:
        outcome = load_report(dataset, s3).checks[name]
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
