"""The dataset spec: one YAML file describing a dataset, with errors that name the key.

The spec's keys are the CLI's (img2dataset's) option names plus the URL-list filter settings,
so one file describes a dataset for both ``dataset-assets download`` and the Dagster assets.
"""

from __future__ import annotations

import math
import os
import posixpath
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import Field

from dataset_assets.engine import DownloadOptions, OptionError
from dataset_assets.engine.storage import filesystem, is_remote_url
from dataset_assets.planning import FilterSettings

# Shards a backfill puts in one run, by default. A run pays Dagster's start-up (~2 s) and the
# worker pool's once, so more shards per run cost less; fewer give finer retries and more runs
# to spread over machines. 8 keeps the fixed cost near 2 % of a 10 000-row shard even on
# loopback, and a failed run leaves at most 8 shards to finish.
SHARDS_PER_RUN = 8

DEFAULT_SPEC = Path(__file__).parent / "demo" / "demo_spec.yaml"
SPEC_ENV = "DATASET_SPEC"


class SpecError(ValueError):
    """The spec is unusable; the message names the source and the key."""


class DatasetSpec(pydantic.BaseModel):
    """Where the URLs come from, where the dataset goes, and how it is built."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # --- where ---
    url_list: str = Field(description="URL list file or folder (any input_format).")
    output_folder: str = Field(
        description="Dataset output folder: a local path or an fsspec URL such as s3://bucket/prefix."
    )
    plan_folder: str | None = Field(
        default=None,
        description="Filtered URLs and shard inputs (local or s3://); default {output_folder}/_plan.",
    )
    input_format: str = "txt"
    url_col: str = "url"
    caption_col: str | None = None
    save_additional_columns: list[str] = []
    bbox_col: str | None = None
    verify_hash: list[str] | None = None

    # --- URL-list filters (applied by filtered_urls when the column exists) ---
    min_caption_length: int | None = None
    min_width: int | None = None
    min_height: int | None = None
    width_col: str = "WIDTH"
    height_col: str = "HEIGHT"
    max_filter_aspect_ratio: float | None = Field(
        default=None, description="Drop rows whose declared width/height ratio exceeds this."
    )
    min_similarity: float | None = None
    similarity_col: str = "similarity"
    max_punsafe: float | None = None
    punsafe_col: str = "punsafe"
    max_pwatermark: float | None = None
    pwatermark_col: str = "pwatermark"
    allowed_domains: list[str] = []
    denied_domains: list[str] = []
    shuffle_seed: int | None = None

    # --- output ---
    output_format: str = "webdataset"
    number_sample_per_shard: int = 10_000
    oom_shard_count: int = 5
    extract_exif: bool = True
    compute_hash: str | None = "sha256"
    overwrite: bool = Field(default=False, description="Re-download shards that are already complete.")
    retry_failed: bool = Field(
        default=False,
        description="Re-fetch only the failed rows of complete shards, keeping their successes.",
    )

    # --- images ---
    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    upscale_interpolation: str = "lanczos"
    downscale_interpolation: str = "area"
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    min_image_size: int = 0
    max_image_area: float | None = None
    max_aspect_ratio: float | None = None
    max_decoded_pixels: int = 100_000_000

    # --- network ---
    processes_count: int = 2
    thread_count: int = 256
    timeout: float = 10.0
    retries: int = 0
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = list(DownloadOptions.disallowed_header_directives)
    max_redirects: int = 10
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections_per_host: int = 8
    requests_per_second_per_host: float | None = None
    host_failure_limit: int = 5
    respect_robots_txt: bool = True
    allow_private_addresses: bool = False

    # --- orchestration (read when the code location loads; a run config cannot change it) ---
    shards_per_run: int = Field(
        default=SHARDS_PER_RUN,
        ge=1,
        description="Shards one backfill run downloads with one worker pool (image_shards' BackfillPolicy).",
    )

    # --- verification / card ---
    success_rate_floor: float = Field(default=0.5, description="dataset_verification fails below this.")
    card_title: str = "Image dataset"

    @property
    def plan_root(self) -> str:
        return self.plan_folder or posixpath.join(self.output_folder, "_plan")

    @property
    def filtered_urls_path(self) -> str:
        return posixpath.join(self.plan_root, "filtered_urls.parquet")

    @property
    def shard_inputs_folder(self) -> str:
        return posixpath.join(self.plan_root, "shards")

    def download_options(self) -> DownloadOptions:
        """The engine's options; raises OptionError naming the bad key."""
        values: dict[str, Any] = {}
        for name in DownloadOptions.field_names():
            if name in type(self).model_fields:
                values[name] = getattr(self, name)
        for name in ("max_image_area", "max_aspect_ratio"):
            if values.get(name) is None:
                values[name] = math.inf
        if self.overwrite and self.retry_failed:
            raise OptionError("overwrite and retry_failed exclude each other")
        values["incremental_mode"] = (
            "overwrite" if self.overwrite else "retry_failed" if self.retry_failed else "incremental"
        )
        # The Dagster path always reads the planner's parquet shard inputs (url, caption, ...).
        values["input_format"] = "parquet"
        values["url_col"] = "url"
        return DownloadOptions(**values)

    def filter_settings(self) -> FilterSettings:
        return FilterSettings(
            url_col=self.url_col,
            caption_col=self.caption_col,
            save_additional_columns=tuple(dict.fromkeys(self._carried_columns())),
            min_caption_length=self.min_caption_length,
            min_width=self.min_width,
            min_height=self.min_height,
            width_col=self.width_col,
            height_col=self.height_col,
            max_aspect_ratio=self.max_filter_aspect_ratio,
            min_similarity=self.min_similarity,
            similarity_col=self.similarity_col,
            max_punsafe=self.max_punsafe,
            punsafe_col=self.punsafe_col,
            max_pwatermark=self.max_pwatermark,
            pwatermark_col=self.pwatermark_col,
            allowed_domains=tuple(self.allowed_domains),
            denied_domains=tuple(self.denied_domains),
            shuffle_seed=self.shuffle_seed,
        )

    def _carried_columns(self) -> list[str]:
        """Input columns the shard inputs must keep: extra metadata, boxes, expected hashes."""
        columns = list(self.save_additional_columns)
        if self.bbox_col:
            columns.append(self.bbox_col)
        if self.verify_hash:
            columns.append(self.verify_hash[0])
        return columns


def spec_path() -> str | Path:
    value = os.environ.get(SPEC_ENV)
    if value and is_remote_url(value):
        return value
    return Path(value or DEFAULT_SPEC)


def _read_text(path: str | Path) -> str:
    """A local file, or a remote one (``DATASET_SPEC=s3://bucket/specs/laion.yaml``, read with the
    standard AWS environment / credential chain), so cluster run workers need no mounted file."""
    if isinstance(path, str) and is_remote_url(path):
        fs, inner = filesystem(path)
        with fs.open(inner, "rb") as handle:
            return handle.read().decode()
    return Path(path).read_text()


def load_spec(path: str | Path | None = None) -> DatasetSpec:
    if path is None:
        path = spec_path()
    try:
        raw = yaml.safe_load(_read_text(path)) or {}
    except OSError as error:
        raise SpecError(f"cannot read dataset spec {path}: {error}") from error
    except yaml.YAMLError as error:
        raise SpecError(f"dataset spec {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"dataset spec {path} must be a mapping of option names to values")
    return spec_from_mapping(raw, source=str(path))


def spec_from_mapping(values: dict[str, Any], source: str = "dataset spec") -> DatasetSpec:
    unknown = sorted(set(values) - set(DatasetSpec.model_fields))
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {', '.join(unknown)}")
    try:
        spec = DatasetSpec(**values)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise SpecError(f"{source}: {problems}") from None
    validate_spec(spec, source)
    return spec


def validate_spec(spec: DatasetSpec, source: str = "dataset spec") -> None:
    """Check the values the engine will see (choices, ranges); raises SpecError naming the key."""
    try:
        spec.download_options()
    except OptionError as error:
        raise SpecError(f"{source}: {error}") from None
