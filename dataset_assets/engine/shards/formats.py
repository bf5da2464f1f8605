"""The interface every output format implements, and the formats without a container file.

A format answers three questions: which file (or folder) of a shard holds the images, how a
sample is written into it (a :class:`SampleSink`), and how the samples are read back
(:meth:`ShardFormat.read_samples`), for resume, verification and the card. The parquet with
every row's metadata and the stats json are common to all formats and written by
:class:`~dataset_assets.engine.shards.writer.ShardWriter`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow.parquet as pq

from dataset_assets.engine.shards.layout import parquet_name
from dataset_assets.io.storage import OutputFolder

# Containers are the only values that json.dumps(indent=4) lays out over several lines.
_NESTED = (dict, list, tuple)
_INDENT_SEPARATORS = (",\n    ", ": ")


def sample_json(meta: dict[str, Any]) -> str:
    """``json.dumps(meta, indent=4, default=str)``, identical output, several times faster.

    With ``indent`` json falls back to its pure-Python encoder; a flat dict (the per-sample
    metadata, unless an additional column holds lists or structs) is laid out the same way by
    the C encoder given indent=4's separators, plus the opening and closing newlines.
    """
    if not meta or any(isinstance(value, _NESTED) for value in meta.values()):
        return json.dumps(meta, indent=4, default=str)
    return "{\n    " + json.dumps(meta, separators=_INDENT_SEPARATORS, default=str)[1:-1] + "\n}"


@dataclass(slots=True)
class StoredSample:
    """A successful row as a format writes it."""

    key: str
    image: bytes
    extension: str  # the encode_format: jpg, png, webp
    caption: str | None  # None when the dataset has no caption column ("" for a missing caption)
    meta: dict[str, Any]  # the per-sample metadata, in the parquet's column order


@dataclass(slots=True)
class ReadSample:
    """A sample read back from a shard; ``meta`` is None where the format keeps none per image."""

    key: str
    image: bytes
    meta: dict[str, Any] | None = None


class ShardReadError(Exception):
    """A shard's image container is unreadable (truncated, corrupt); the message names it."""


class SampleSink(Protocol):
    def add(self, sample: StoredSample) -> None: ...

    def close(self) -> None: ...


class ShardFormat:
    """One output format. Subclasses set ``name`` and override what differs."""

    name: ClassVar[str]
    # The images live in a column of the shard's parquet (named after the encode_format).
    images_in_parquet: ClassVar[bool] = False
    # Whether the shard has a parquet of every row's metadata.
    writes_parquet: ClassVar[bool] = True

    def container(self, shard: str) -> str | None:
        """The file or folder holding the shard's images, relative to the output folder."""
        return None

    def open_sink(self, output: OutputFolder, shard: str) -> tuple[str, SampleSink] | None:
        """A sink writing the shard's container under a temporary path, and that path (the
        writer commits it to :meth:`container` once the shard is complete)."""
        return None

    def read_samples(self, output: OutputFolder, shard: str, extension: str) -> Iterator[ReadSample]:
        """The stored images of a committed shard, with their json where the format has one."""
        return iter(())


class FolderSink:
    """``{key}.jpg``, ``{key}.txt``, ``{key}.json`` files in the shard's folder."""

    def __init__(self, output: OutputFolder, folder: str) -> None:
        self._output = output
        self._dir = folder
        output.fs.makedirs(folder, exist_ok=True)

    def _write(self, name: str, data: bytes) -> None:
        with self._output.fs.open(f"{self._dir}/{name}", "wb") as handle:
            handle.write(data)

    def add(self, sample: StoredSample) -> None:
        self._write(f"{sample.key}.{sample.extension}", sample.image)
        if sample.caption is not None:
            self._write(f"{sample.key}.txt", sample.caption.encode())
        self._write(f"{sample.key}.json", sample_json(sample.meta).encode())

    def close(self) -> None:
        pass


class FilesFormat(ShardFormat):
    """img2dataset's ``files``: a folder per shard."""

    name = "files"

    def container(self, shard: str) -> str | None:
        return shard

    def open_sink(self, output: OutputFolder, shard: str) -> tuple[str, SampleSink] | None:
        tmp = output.tmp_path(shard)
        return tmp, FolderSink(output, tmp)

    def read_samples(self, output: OutputFolder, shard: str, extension: str) -> Iterator[ReadSample]:
        folder = output.path(shard)
        for path in sorted(output.fs.glob(f"{folder}/*.{extension}")):
            key = posixpath.basename(path)[: -len(extension) - 1]
            meta_path = f"{folder}/{key}.json"
            meta = json.loads(output.fs.cat_file(meta_path)) if output.fs.exists(meta_path) else None
            yield ReadSample(key, output.fs.cat_file(path), meta)


class ParquetFormat(ShardFormat):
    """img2dataset's ``parquet``: the images in a binary column of the shard's parquet."""

    name = "parquet"
    images_in_parquet = True

    def read_samples(self, output: OutputFolder, shard: str, extension: str) -> Iterator[ReadSample]:
        try:
            table = pq.read_table(
                output.path(parquet_name(shard)), columns=["key", "status", extension], filesystem=output.fs
            )
        except (OSError, ValueError) as error:
            raise ShardReadError(f"{parquet_name(shard)}: {error}") from None
        columns = (table.column(c).to_pylist() for c in ("key", "status", extension))
        for key, status, payload in zip(*columns, strict=True):
            if status == "success" and payload is not None:
                yield ReadSample(key, payload)


class DummyFormat(ShardFormat):
    """img2dataset's ``dummy``: nothing but the stats (for measuring the download alone)."""

    name = "dummy"
    writes_parquet = False
