"""The code location: every asset, check, job and schedule, bound to the dataset spec.

The spec comes from the YAML file named by ``DATASET_SPEC`` (required: an unset variable is a
load error that says so, with the demo's command; ``dagster dev`` instead shows one stand-in
asset, ``dataset_spec_not_set``, whose description is that message); under ``dagster dev`` without
``DAGSTER_HOME`` every asset's description starts by saying that the instance is a temporary,
empty one; keys that are not fixed per dataset can be overridden
per run under ``resources.dataset.config``. Loading is lazy (``@dg.definitions``): importing
this module reads no spec, so tools and tests import it freely. ``s3://`` locations in
the spec are reached with the ``s3`` resource, read from the standard AWS environment variables
(``AWS_ENDPOINT_URL`` for MinIO/R2, ``AWS_REGION``, credentials) or boto's credential chain.
"""

import os
from collections.abc import Mapping

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets.card import dataset_card
from dataset_assets.assets.quality import dataset_verification, verification_checks
from dataset_assets.assets.shards import image_shards
from dataset_assets.assets.urls import filtered_urls, url_shards
from dataset_assets.resources import dataset_resource, s3_resource_from_env
from dataset_assets.schedules import download_shards_job, resume_missing_shards
from dataset_assets.spec import SPEC_ENV, DatasetSpec, SpecError, demo_hint, load_spec

# Shown at the top of every asset's description when the UI's instance is a temporary one.
TEMPORARY_INSTANCE_NOTICE = (
    "DAGSTER_HOME is not set: this UI shows a temporary instance, created empty by `dagster dev` "
    "(and deleted when it stops), so runs and partitions recorded elsewhere do not appear here. "
    "Restart with DAGSTER_HOME set to the instance's folder. "
)


def build_defs(spec: DatasetSpec, s3: S3Resource | None = None) -> dg.Definitions:
    """The definitions for one dataset spec (tests and tools build their own)."""
    return dg.Definitions(
        assets=[
            filtered_urls,
            url_shards,
            image_shards.with_attributes(
                backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=spec.shards_per_run)
            ),
            dataset_verification,
            dataset_card,
        ],
        asset_checks=verification_checks,
        jobs=[download_shards_job],
        schedules=[resume_missing_shards],
        resources={"dataset": dataset_resource(spec), "s3": s3 or s3_resource_from_env()},
        # Each shard's engine brings its own worker processes; a subprocess per step would
        # only add seconds of start-up per run.
        executor=dg.in_process_executor,
    )


def temporary_instance_notice(environ: Mapping[str, str] | None = None) -> str | None:
    """The notice for ``dagster dev`` without ``DAGSTER_HOME`` (its instance is a new temporary
    folder, empty however many runs the demo or the CLI recorded), else None.

    ``dagster dev`` marks its processes (and the code server and runs they start) with
    ``DAGSTER_IS_DEV_CLI``; ``DAGSTER_HOME`` is inherited as the user set it.
    """
    environ = os.environ if environ is None else environ
    if _under_dagster_dev(environ) and not environ.get("DAGSTER_HOME"):
        return TEMPORARY_INSTANCE_NOTICE + demo_hint()
    return None


def _under_dagster_dev(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("DAGSTER_IS_DEV_CLI"))


# The one asset `dagster dev` shows when DATASET_SPEC is unset, so that the catalog and the
# lineage say why they hold no dataset (a load error shows only under Deployment).
SPEC_NOT_SET = "dataset_spec_not_set"


def spec_not_set_defs(error: SpecError) -> dg.Definitions:
    """A stand-in code location: one external asset (nothing to run) whose description is the
    error. Only ``dagster dev`` gets it; every other loader (the CLI, ``dg check defs``, run
    workers, tests) gets the error itself."""
    return dg.Definitions(
        assets=[dg.AssetSpec(SPEC_NOT_SET, group_name="setup", description=str(error), kinds={"yaml"})]
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, for the spec named by ``DATASET_SPEC``, read when Dagster loads it."""
    try:
        spec = load_spec()
    except SpecError as error:
        if _under_dagster_dev(os.environ) and not os.environ.get(SPEC_ENV, "").strip():
            return spec_not_set_defs(error)
        raise
    definitions = build_defs(spec)
    notice = temporary_instance_notice()
    if notice:
        definitions = definitions.map_asset_specs(
            func=lambda spec: spec.replace_attributes(description=f"{notice}\n\n{spec.description or ''}")
        )
    return definitions
