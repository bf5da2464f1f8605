"""The schema Hugging Face ``datasets`` should be given to load a webdataset output.

Why declare it: ``load_dataset("webdataset", ...)`` infers its features from the first five
samples of the first tar. A json field that is null in all five (a missing caption, a nullable
input column) is typed null, and the first later sample with a value fails the whole load
("Couldn't cast"). The shard's parquet has exactly the json's fields, with their types, so the
features are derived from it instead of guessed. ``datasets`` is imported only when called: it
is not a dependency of the engine.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.shards.layout import parquet_name, shard_of_stats
from dataset_assets.io.storage import OutputFolder


def huggingface_features(output_folder: str | OutputFolder, options: DownloadOptions) -> Any:
    """``datasets.Features`` for the samples of ``output_folder``, from its first complete shard.

    Every shard of a dataset has the same parquet schema (same options, same input columns),
    and every sample the same members: the image, ``json``, and ``txt`` when there is a caption
    column. Raises FileNotFoundError naming the folder when no shard is complete yet.
    """
    import datasets

    output = output_folder if isinstance(output_folder, OutputFolder) else OutputFolder(output_folder)
    shards = sorted(filter(None, (shard_of_stats(posixpath.basename(p)) for p in output.fs.ls(output.root))))
    if not shards:
        raise FileNotFoundError(f"{output.url}: no complete shard to read the sample schema from")
    with output.fs.open(output.path(parquet_name(shards[0])), "rb") as handle:
        schema = pq.read_schema(handle)
    schema = schema.remove_metadata()
    if options.encode_format in schema.names:  # output_format parquet keeps the images there
        schema = schema.remove(schema.get_field_index(options.encode_format))
    members: dict[str, Any] = {
        options.encode_format: datasets.Image(),
        "json": datasets.Features.from_arrow_schema(schema),
    }
    if options.caption_col:
        members["txt"] = datasets.Value("string")
    members["__key__"] = datasets.Value("string")
    members["__url__"] = datasets.Value("string")
    return datasets.Features(members)
