"""Every knob of the shard engine, under img2dataset's option names, declared once.

One frozen dataclass travels from the CLI / Dagster config to every worker process (it is
pickled once per worker), so validation happens once, up front, with messages that name the
option the user got wrong. Each field is the option's only declaration: the spec, the
``dataset`` resource, ``dataset-assets download --help`` and README's table are derived from it
(see :mod:`dataset_assets.catalogue`). Defaults follow img2dataset 1.47.0 except where
its default is unsafe or slow; the help text says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dataset_assets.schema.option import OptionError, check, option

__all__ = ["DownloadOptions", "OptionError"]

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")

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
INCREMENTAL_MODES = ("incremental", "overwrite", "retry_failed")
# Origins whose policy files one worker loads at once (at most thread_count): each holds at most
# one capped file (500 KiB) at a time, so 64 of them stay within 32 MB (see Fetcher._load_policies).
MAX_POLICY_LOADS = 64
# The column of a shard's input holding the URL to request when it differs from the stored
# ``url`` (the planner's normalised form); without it the trimmed ``url`` is requested.
FETCH_URL_COLUMN = "fetch_url"
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
        FETCH_URL_COLUMN,
        *HASH_TYPES,
    }
)


def _input_formats() -> tuple[str, ...]:
    """Named where they are read (the URL-list reader imports DuckDB, so only when asked)."""
    from dataset_assets.io.sources import INPUT_FORMATS

    return INPUT_FORMATS


def _output_formats() -> tuple[str, ...]:
    """Named where they are written (the writers import pyarrow, so only when asked)."""
    from dataset_assets.engine.shards.registry import FORMATS

    return tuple(FORMATS)


@dataclass(frozen=True)
class DownloadOptions:
    """Settings shared by the reader, fetcher, image processor and writers."""

    # --- input ---
    input_format: str = option(
        "txt",
        "Format of the URL list files (txt lines are URLs even with commas; a txt list has no "
        "caption or other columns to copy). json: a records array, JSON lines or pandas' "
        "to_json() object of columns.",
        choices=_input_formats,
        also_used_by=("planner",),
    )
    url_col: str = option("url", "Column of the URL list that holds the URL.")
    caption_col: str | None = option(None, "Column holding the caption; none = no captions.")
    save_additional_columns: tuple[str, ...] = option(
        (), "Input columns copied into every sample's metadata."
    )
    bbox_col: str | None = option(
        None, "Column of [x0, y0, x1, y1] relative boxes (e.g. faces) to blur in the stored image."
    )
    verify_hash: tuple[str, str] | None = option(
        None, "[input column, hash type]: refuse images whose hash differs from the column's."
    )

    # --- output (layout keys: fixed per dataset) ---
    output_format: str = option(
        "files",
        "Shard format on disk (one class each in engine/shards).",
        choices=_output_formats,
        fixed=True,
    )
    number_sample_per_shard: int = option(10_000, "Rows per shard.", gt=0, fixed=True)
    oom_shard_count: int = option(
        5, "Digits of shard numbers in file names (00042.tar for 5).", ge=0, fixed=True
    )
    extract_exif: bool = option(True, "Store the image's EXIF tags in the sample metadata.")
    compute_hash: str | None = option(
        "sha256", "Hash of the original bytes stored per sample; none = no hash.", choices=HASH_TYPES
    )
    sizes_json: bool = option(
        False,
        "New: also write open_clip's sizes.json (container name -> samples) beside the shards "
        "(__len__, the total, is always written); img2dataset's incremental mode cannot parse "
        "its name, so leave off where img2dataset itself may resume the folder.",
    )

    # --- resize / encode ---
    image_size: int = option(256, "Target side length in pixels.", gt=0, fixed=True)
    resize_mode: str = option(
        "border", "How images are fitted to image_size.", choices=RESIZE_MODES, fixed=True
    )
    resize_only_if_bigger: bool = option(False, "Never upscale: smaller images keep their size.")
    upscale_interpolation: str = option(
        "lanczos", "Interpolation when enlarging (luma only into jpg).", choices=INTERPOLATIONS
    )
    downscale_interpolation: str = option("area", "Interpolation when shrinking.", choices=INTERPOLATIONS)
    encode_format: str = option("jpg", "Format of the stored images.", choices=ENCODE_FORMATS, fixed=True)
    encode_quality: int = option(
        95, "JPEG/WebP quality 1..100 (101 = lossless WebP); PNG compression level 0..9.", ge=0, le=101
    )
    skip_reencode: bool = option(
        False, "Store the original bytes when no resize is needed and the format matches."
    )
    min_image_size: int = option(0, "Refuse images whose smaller side is below this.", ge=0)
    max_image_area: float | None = option(
        None, "Refuse images with more pixels than this (from the header); none = no limit.", gt=0
    )
    max_aspect_ratio: float | None = option(
        None, "Refuse images whose long/short side ratio exceeds this; none = no limit.", gt=0
    )
    max_decoded_pixels: int = option(
        100_000_000,
        "New: refuse images above this many pixels from the header, before decoding (decompression bombs).",
        gt=0,
    )
    # 512 MiB lets every 8-bit image under max_decoded_pixels through (100 Mpx RGBA = 400 MB) and
    # 16-bit ones up to 67 Mpx RGBA / 89 Mpx RGB; a few-KB 16-bit RGBA PNG cannot cost gigabytes.
    max_decoded_bytes: int = option(
        512 * 1024 * 1024,
        "New: refuse images whose decoded size (pixels x channels x bytes per channel, "
        "from the header) exceeds this, before decoding.",
        gt=0,
    )

    # --- network ---
    processes_count: int = option(
        1, "Worker processes (each with its own event loop and image thread).", gt=0
    )
    thread_count: int = option(
        256,
        (
            "Concurrent image requests per process (asyncio tasks, not threads); each process "
            f"also loads the policy files of up to this many origins ({MAX_POLICY_LOADS} at most) "
            "at once, beside them."
        ),
        gt=0,
    )
    timeout: float = option(
        10.0, "Total deadline per request (connect + headers + body), from when it is sent.", gt=0
    )
    retries: int = option(0, "Retries on transient errors (timeouts, resets, 408/425/429/5xx).", ge=0)
    user_agent_token: str | None = option(
        None, "Your token in the User-Agent, also honoured as a robots.txt and ai.txt user agent."
    )
    disallowed_header_directives: tuple[str, ...] = option(
        DEFAULT_DISALLOWED_HEADER_DIRECTIVES, "X-Robots-Tag directives that refuse an image."
    )
    max_redirects: int = option(10, "New: redirects followed per request (loops detected).", ge=0)
    max_body_bytes: int = option(
        32 * 1024 * 1024, "New: body size cap in bytes, enforced while streaming.", gt=0
    )
    max_connections_per_host: int = option(
        8,
        "New: at most this many connections per host for the whole run, whatever processes_count "
        "(more than one only as its queue needs).",
        gt=0,
    )
    requests_per_second_per_host: float | None = option(
        None, "New: requests per second per host for the whole run; none = no rate limit.", gt=0
    )
    host_failure_limit: int = option(
        5, "New: real host failures in a row before its remaining rows are skipped; 0 = never.", ge=0
    )
    respect_robots_txt: bool = option(
        True,
        "New: honour robots.txt Allow/Disallow for our tokens (dataset-assets, user_agent_token, "
        "img2dataset), else * (robots.txt fetched once per origin per run).",
    )
    respect_content_signal: bool = option(
        True, "New: honour Cloudflare Content-Signal ai-train=no in robots.txt (origin-wide)."
    )
    respect_content_usage: bool = option(
        True,
        "New: honour IETF aipref Content-Usage train-ai=n, as a robots.txt rule (longest path "
        "match) and as a response header (checked before the body is read).",
    )
    respect_tdmrep: bool = option(
        True,
        "New: honour W3C TDMRep tdm-reservation=1, from /.well-known/tdmrep.json (once per "
        "origin per run) and the response header.",
    )
    respect_ai_txt: bool = option(
        True, "New: honour Spawning ai.txt Disallow rules (/ai.txt, once per origin per run)."
    )
    respect_xmp_datamining: bool = option(
        True,
        "New: refuse images whose own XMP says IPTC/PLUS plus:DataMining DMI-PROHIBITED* "
        "(read from the bytes before decoding).",
    )
    url_blocklist: str | None = option(
        None,
        "New: removal list (file or folder, local or fsspec URL): one URL, URL sha256 or domain "
        "(subdomains included) a line; matching rows are never requested.",
    )
    allow_private_addresses: bool = option(
        False, "New: allow private and loopback addresses (metadata addresses are always refused)."
    )

    # --- shard bookkeeping ---
    incremental_mode: str = option(
        "incremental",
        "incremental: skip complete shards; overwrite: redo them; "
        "retry_failed: redo only failed rows of complete shards.",
        choices=INCREMENTAL_MODES,
    )

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
        check(self)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Rules between options (single-option rules are declared on the fields)."""
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
        if self.encode_format == "png" and not 0 <= self.encode_quality <= 9:
            raise OptionError("encode_quality is the PNG compression level for png and must be in 0..9")
        if self.encode_format != "png" and not 1 <= self.encode_quality <= 101:
            raise OptionError("encode_quality must be in 1..100 (101 = lossless webp)")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> DownloadOptions:
        """Build from a dict of option names, rejecting unknown keys by name."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise OptionError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> DownloadOptions:
        return dataclasses.replace(self, **changes)
