"""The output formats by ``output_format`` name: adding a format is one line here."""

from __future__ import annotations

from dataset_assets.engine.shards.formats import DummyFormat, FilesFormat, ParquetFormat, ShardFormat
from dataset_assets.engine.shards.tfrecord import TFRecordFormat
from dataset_assets.engine.shards.webdataset import WebDatasetFormat

FORMATS: dict[str, ShardFormat] = {
    fmt.name: fmt
    for fmt in (WebDatasetFormat(), ParquetFormat(), FilesFormat(), TFRecordFormat(), DummyFormat())
}


def shard_format(output_format: str) -> ShardFormat:
    return FORMATS[output_format]
