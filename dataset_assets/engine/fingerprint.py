"""The fingerprint of a shard's input rows: what a committed shard says it was built from.

Why: shard ids are positional, so a re-plan (a new filter, a denied domain) can give shard
00003 other rows while its old files stay on disk looking complete. The planner stores each
shard input's fingerprint in the parquet footer; the writer records the fingerprint of the
rows it was given in the shard's stats; the skip rule (:func:`~dataset_assets.engine.runner.
shard_completion`) compares the two, so a re-planned shard is downloaded again and an
unchanged one is not. Reading a footer is one small read, whatever the shard's size.
"""

from __future__ import annotations

import hashlib

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

FINGERPRINT_KEY = b"dataset_assets.shard_fingerprint"


def compact(table: pa.Table) -> pa.Table:
    """The rows copied into fresh, contiguous buffers, without schema metadata.

    A slice keeps (and, serialised, may carry) bytes of the batch it was cut from, so equal rows
    cut from differently sized batches would otherwise fingerprint differently.
    """
    table = table.replace_schema_metadata(None)
    return table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks()


def table_fingerprint(table: pa.Table, compacted: bool = False) -> str:
    """A digest of a shard's rows and schema (compacted first unless it is, see :func:`compact`)."""
    if not compacted:
        table = compact(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


def footer_fingerprint(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str | None] | None:
    """(rows, fingerprint) from a shard input's parquet footer; None if missing or unreadable."""
    try:
        with fs.open(path, "rb") as handle:
            meta = pq.read_metadata(handle)
    except (OSError, ValueError, pa.ArrowException):
        return None
    value = (meta.metadata or {}).get(FINGERPRINT_KEY)
    return meta.num_rows, value.decode() if value else None
