"""Publish: the dataset card, written next to the data and shown in the UI."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from dataset_assets.assets import figures
from dataset_assets.assets.quality import REPORT_NAME, dataset_verification
from dataset_assets.assets.urls import FILTER_REPORT_NAME
from dataset_assets.io.storage import OutputFolder
from dataset_assets.partitions import shards_partitions
from dataset_assets.reporting.card import CardInputs, build_card, card_spec, ui_markdown, write_card
from dataset_assets.resources import DatasetResource, spec_storage_options


@dg.asset(group_name="publish", deps=[dataset_verification], kinds={"markdown"})
def dataset_card(
    context: dg.AssetExecutionContext, dataset: DatasetResource, s3: S3Resource
) -> dg.MaterializeResult:
    """DATASET_CARD.md, a Hugging Face dataset card: front matter, totals, charts, samples,
    provenance, sample schema, filters, failures, etiquette, consent, limitations, contact, spec."""
    spec = dataset.spec()
    storage_options = spec_storage_options(spec, s3)
    output = OutputFolder(spec.output_folder, storage_options)
    plan = OutputFolder(spec.plan_root, storage_options)
    inputs = CardInputs(
        title=spec.card_title,
        spec=card_spec(spec.model_dump()),
        shard_keys=sorted(context.instance.get_dynamic_partitions(shards_partitions.name)),
        options=spec.download_options(),
        filter_report=plan.read_json(FILTER_REPORT_NAME) if plan.exists(FILTER_REPORT_NAME) else None,
        verification=output.read_json(REPORT_NAME) if output.exists(REPORT_NAME) else None,
        input_storage_options=storage_options,
    )
    card = build_card(output, inputs)
    paths = write_card(output, card)
    return dg.MaterializeResult(
        metadata={
            "card": dg.MetadataValue.md(ui_markdown(card)),
            "path": dg.MetadataValue.path(paths[-1]),
            "images": int(card.totals["successes"]),
            "success_rate": figures.rate(card.totals["success_rate"]),
        }
    )
