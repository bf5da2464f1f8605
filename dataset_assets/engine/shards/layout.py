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
    """One per-sample column: its arrow type and when a shard has it (given the options)."""

    name: str
    type: pa.DataType
    present: Callable[[Any], bool] = lambda options: True


# The per-sample columns after the input's additional columns, in img2dataset's order; the
# hash column is named after the hash type.
SAMPLE_COLUMNS: tuple[Column, ...] = (
    Column("caption", pa.string(), lambda options: bool(options.caption_col)),
    Column("url", pa.string()),
    Column("key", pa.string()),
    Column("status", pa.string()),
    Column("error_message", pa.string()),
    Column("width", pa.int32()),
    Column("height", pa.int32()),
    Column("original_width", pa.int32()),
    Column("original_height", pa.int32()),
    Column("exif", pa.string(), lambda options: options.extract_exif),
)


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
