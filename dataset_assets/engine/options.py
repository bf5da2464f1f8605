"""Every knob of the shard engine, under img2dataset's option names.

One frozen dataclass travels from the CLI / Dagster config to every worker process (it is
pickled once per worker), so validation happens once, up front, with messages that name the
option the user got wrong.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
OUTPUT_FORMATS = ("webdataset", "parquet", "files", "dummy")
INPUT_FORMATS = (
    "txt",
    "txt.gz",
    "csv",
    "csv.gz",
    "tsv",
    "tsv.gz",
    "json",
    "json.gz",
    "jsonl",
    "jsonl.gz",
    "parquet",
)
HASH_TYPES = ("md5", "sha256", "sha512")
INTERPOLATIONS = (
    "nearest",
    "linear",
    "bilinear",
    "cubic",
    "bicubic",
    "area",
    "lanczos",
    "lanczos4",
)
DEFAULT_DISALLOWED_HEADER_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RESERVED_COLUMNS = frozenset(
    {
        "key",
        "caption",
        "url",
        "width",
        "height",
        "original_width",
        "original_height",
        "status",
        "error_message",
        "exif",
        *HASH_TYPES,
    }
)


class OptionError(ValueError):
    """A user-facing configuration error; the message always names the offending option."""


@dataclass(frozen=True)
class DownloadOptions:
    """Settings shared by the reader, fetcher, image processor and writers.

    Defaults follow img2dataset 1.47.0 except where its default is unsafe or slow; each such
    difference is noted on the field.
    """

    # --- input ---
    input_format: str = "txt"
    url_col: str = "url"
    caption_col: str | None = None
    save_additional_columns: tuple[str, ...] = ()
    bbox_col: str | None = None
    verify_hash: tuple[str, str] | None = None  # (input column, hash type)

    # --- output ---
    output_format: str = "files"
    number_sample_per_shard: int = 10_000
    oom_shard_count: int = 5
    extract_exif: bool = True
    compute_hash: str | None = "sha256"

    # --- resize / encode ---
    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    upscale_interpolation: str = "lanczos"
    downscale_interpolation: str = "area"
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    min_image_size: int = 0
    max_image_area: float = math.inf
    max_aspect_ratio: float = math.inf
    # Hard cap checked from the image header before any pixel is allocated (img2dataset has
    # none besides OpenCV's own 2^30 limit): protects workers against decompression bombs.
    max_decoded_pixels: int = 100_000_000

    # --- network ---
    processes_count: int = 1
    # Concurrent requests per worker process (img2dataset's name and default; here they are
    # asyncio tasks, not threads: 256 in flight cost a worker about 10 MB, not 256 stacks).
    thread_count: int = 256
    # Total deadline per request: connect + headers + body, from the moment it is sent (waiting
    # for the host's turn or the worker's request window does not count).
    timeout: float = 10.0
    retries: int = 0
    user_agent_token: str | None = None
    disallowed_header_directives: tuple[str, ...] = DEFAULT_DISALLOWED_HEADER_DIRECTIVES
    max_redirects: int = 10
    max_body_bytes: int = 32 * 1024 * 1024
    # Per host for the whole run, whatever processes_count: each host's rows go to one worker.
    max_connections_per_host: int = 8
    requests_per_second_per_host: float | None = None  # per host for the run; None = no rate limit
    host_failure_limit: int = 5  # real host failures in a row before a host is skipped; 0 = never
    respect_robots_txt: bool = True
    allow_private_addresses: bool = False

    # --- shard bookkeeping ---
    # incremental: skip complete shards; overwrite: redo them; retry_failed: redo only the
    # failed rows of complete shards (keeping their successes) and download missing shards.
    incremental_mode: str = "incremental"

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept lists (from JSON / YAML / CLI) where tuples are stored.
        for name in ("save_additional_columns", "disallowed_header_directives"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, ())
            elif isinstance(value, str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
            else:
                object.__setattr__(self, name, tuple(value))
        if self.verify_hash is not None:
            object.__setattr__(self, "verify_hash", tuple(self.verify_hash))
        if self.bbox_col and self.bbox_col not in self.save_additional_columns:
            object.__setattr__(
                self, "save_additional_columns", (*self.save_additional_columns, self.bbox_col)
            )
        self._validate()

    def _validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise OptionError(f"{name}={value!r} is not one of {', '.join(allowed)}")

        choice("input_format", INPUT_FORMATS)
        choice("output_format", OUTPUT_FORMATS)
        choice("resize_mode", RESIZE_MODES)
        choice("encode_format", ENCODE_FORMATS)
        choice("upscale_interpolation", INTERPOLATIONS)
        choice("downscale_interpolation", INTERPOLATIONS)
        choice("incremental_mode", ("incremental", "overwrite", "retry_failed"))
        if self.compute_hash is not None:
            choice("compute_hash", HASH_TYPES)
        if self.verify_hash is not None:
            if len(self.verify_hash) != 2:
                raise OptionError("verify_hash must be [input_column, hash_type]")
            if self.verify_hash[1] != self.compute_hash:
                raise OptionError(
                    f"verify_hash type {self.verify_hash[1]!r} must equal compute_hash {self.compute_hash!r}"
                )
        clash = RESERVED_COLUMNS.intersection(self.save_additional_columns)
        if clash:
            raise OptionError(f"save_additional_columns may not contain reserved names: {sorted(clash)}")
        positive = ("image_size", "number_sample_per_shard", "processes_count", "thread_count", "timeout")
        for name in positive:
            if not getattr(self, name) > 0:
                raise OptionError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "min_image_size", "max_redirects", "oom_shard_count", "host_failure_limit"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.requests_per_second_per_host is not None and not self.requests_per_second_per_host > 0:
            raise OptionError("requests_per_second_per_host must be > 0 (or unset for no limit)")
        if self.encode_format == "png" and not 0 <= self.encode_quality <= 9:
            raise OptionError("encode_quality is the PNG compression level for png and must be in 0..9")
        if self.encode_format != "png" and not 1 <= self.encode_quality <= 101:
            raise OptionError("encode_quality must be in 1..100 (101 = lossless webp)")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> DownloadOptions:
        """Build from a dict of option names, rejecting unknown keys by name."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> DownloadOptions:
        return dataclasses.replace(self, **changes)

    @property
    def hash_column(self) -> str | None:
        return self.compute_hash
