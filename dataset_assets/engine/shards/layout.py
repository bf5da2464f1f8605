"""Names and columns of a shard, as img2dataset lays them out.

Every module that needs a shard's file name, a sample key or the per-sample columns asks here:
the writer, resume, verification, the card, the planner's shard inputs and the assets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

STATS_SUFFIX = "_stats.json"

# Dataset-wide files. Only shard files (``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``)
# sit in the root beside the trainers' files and the card: img2dataset's incremental mode reads
# every ``*.json`` of the root as ``int(name.split("_")[0])``, and webdataset and open_clip glob
# ``*.tar`` there. Reports therefore live in a folder neither glob enters.
REPORTS_DIR = "_reports"
VERIFICATION_REPORT = f"{REPORTS_DIR}/verification.json"
# The cache behind the trainers' files: each stats file's listing token and sample count.
SAMPLE_COUNTS_CACHE = f"{REPORTS_DIR}/sample_counts.json"
# open_clip's get_dataset_size reads these next to the shards: ``__len__`` (an int literal, the
# total) always, ``sizes.json`` (container basename -> samples) when the ``sizes_json`` option is
# on, since img2dataset's ``*.json`` scan cannot parse its name.
LEN_NAME = "__len__"
SIZES_NAME = "sizes.json"


def shard_name(shard_id: int, oom_shard_count: int) -> str:
    """``00042`` for shard 42 with ``oom_shard_count`` 5: the stem of every file of the shard."""
    return str(shard_id).zfill(oom_shard_count)


def stats_name(shard: str) -> str:
    """The stats json, written last: its presence is what makes a shard complete."""
    return f"{shard}{STATS_SUFFIX}"


def shard_of_stats(name: str) -> str | None:
    """``00042`` for ``00042_stats.json``; None for any other file name."""
    stem = name[: -len(STATS_SUFFIX)] if name.endswith(STATS_SUFFIX) else ""
    return stem if stem.isdigit() else None


def parquet_name(shard: str) -> str:
    """Every row's metadata (and, for output_format parquet, the images)."""
    return f"{shard}.parquet"


def compute_key(index: int, shard_id: int, number_sample_per_shard: int, oom_shard_count: int) -> str:
    """img2dataset's positional key: shard id and row index, zero-padded, stable across re-runs."""
    # ceil(log10(nsps)) digits for the row: 4 for nsps=10000 (SSSSSIIII), 1 for nsps=3.
    oom_sample = key_digits(number_sample_per_shard)
    value = 10**oom_sample * shard_id + index
    return str(value).zfill(oom_sample + oom_shard_count)


def key_digits(n: int) -> int:
    """ceil(log10(n)) in integers: the digits a row index takes in a key."""
    digits = 0
    power = 1
    while power < n:
        power *= 10
        digits += 1
    return digits


def row_index(key: str, shard_id: int, number_sample_per_shard: int) -> int:
    """The row a key stands for inside its shard (inverse of :func:`compute_key`)."""
    return int(key) - shard_id * 10 ** key_digits(number_sample_per_shard)


@dataclass(frozen=True)
class Column:
    """One per-sample column: its arrow type, when a shard has it (given the options), and what
    it holds (the dataset card's schema section quotes it, so the meaning is written once)."""

    name: str
    type: pa.DataType
    present: Callable[[Any], bool] = lambda options: True
    doc: str = ""


# The per-sample columns after the input's additional columns, in img2dataset's order; the
# hash column is named after the hash type.
SAMPLE_COLUMNS: tuple[Column, ...] = (
    Column("caption", pa.string(), lambda options: bool(options.caption_col), "the URL list's caption text"),
    Column("url", pa.string(), doc="the image URL, as the URL list gave it"),
    Column("key", pa.string(), doc="the sample's key: shard id and row index, zero-padded"),
    Column("status", pa.string(), doc="success, failed_to_download or failed_to_resize"),
    Column("error_message", pa.string(), doc="why the row was not stored (null on success)"),
    Column("width", pa.int32(), doc="stored image width, px"),
    Column("height", pa.int32(), doc="stored image height, px"),
    Column("original_width", pa.int32(), doc="downloaded image width before resizing, px"),
    Column("original_height", pa.int32(), doc="downloaded image height before resizing, px"),
    Column("exif", pa.string(), lambda options: options.extract_exif, "the original's EXIF tags, as JSON"),
)
HASH_DOC = "hash of the original downloaded bytes, hex"
ADDITIONAL_DOC = "copied from the URL list (save_additional_columns)"
IMAGE_DOC = "the stored image's encoded bytes"


def hash_column(options: Any) -> str | None:
    return options.compute_hash or None


def metadata_schema(options: Any, input_schema: pa.Schema) -> pa.Schema:
    """Column order and types of img2dataset's per-sample metadata (parquet and json)."""
    fields: list[pa.Field] = [
        input_schema.field(name)
        for name in options.save_additional_columns
        if input_schema.get_field_index(name) >= 0
    ]
    fields += [pa.field(column.name, column.type) for column in SAMPLE_COLUMNS if column.present(options)]
    if hash_column(options):
        fields.append(pa.field(options.compute_hash, pa.string()))
    return pa.schema(fields)


def image_column(options: Any, images_in_parquet: bool) -> str | None:
    """The parquet column holding the images (output_format parquet), named after the encoding."""
    return options.encode_format if images_in_parquet else None


def parquet_schema(options: Any, input_schema: pa.Schema, images_in_parquet: bool) -> pa.Schema:
    """A shard parquet's columns: the per-sample metadata, then the images where they live there."""
    schema = metadata_schema(options, input_schema)
    column = image_column(options, images_in_parquet)
    return schema.append(pa.field(column, pa.binary())) if column else schema


def column_doc(options: Any, name: str) -> str:
    """What the per-sample column or json field ``name`` holds (the card's schema section)."""
    for column in SAMPLE_COLUMNS:
        if column.name == name:
            return column.doc
    if name == hash_column(options):
        return HASH_DOC
    if name == options.encode_format:
        return IMAGE_DOC
    return ADDITIONAL_DOC if name in options.save_additional_columns else ""
