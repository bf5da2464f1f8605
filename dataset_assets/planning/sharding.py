"""Cut the filtered URL list into one parquet input file per shard, idempotently.

Shard ``k`` holds rows ``[k*n, (k+1)*n)`` of the filtered list, so shard ids and sample keys are
positional exactly as in img2dataset. Re-planning must not touch shard inputs whose rows did not
change: their mtimes drive Dagster's staleness and a downloader may be reading them. Each shard
file therefore carries a fingerprint of its own rows in its parquet footer; a file is rewritten
only when its fingerprint or row count differs, and every write is a temp file plus rename, so a
killed run never leaves a file that looks complete but is not. The manifest, written last, lists
the shards of the last complete run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.engine.records import shard_name

MANIFEST_NAME = "_manifest.json"
_FINGERPRINT_KEY = b"dataset_assets.shard_fingerprint"
_MANIFEST_FORMAT = 1
_MAX_BATCH_ROWS = 65_536


def read_manifest(out_dir: str) -> dict[str, Any] | None:
    """The manifest of the last complete :func:`write_shard_inputs` run, or None if there is none."""
    try:
        with open(os.path.join(out_dir, MANIFEST_NAME), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _MANIFEST_FORMAT else None


def _compact(table: pa.Table) -> pa.Table:
    """The rows copied into fresh, contiguous buffers, without schema metadata.

    A slice keeps (and, serialised, may carry) bytes of the batch it was cut from, so equal rows
    cut from differently sized batches would otherwise fingerprint differently.
    """
    table = table.replace_schema_metadata(None)
    return table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks()


def _fingerprint(table: pa.Table) -> str:
    """A digest of a compacted shard's rows and schema (see :func:`_compact`)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


def _existing_fingerprint(path: str) -> tuple[int, str | None] | None:
    """(rows, fingerprint) from a shard file's footer; None if missing or unreadable."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return None
    kv = meta.metadata or {}
    value = kv.get(_FINGERPRINT_KEY)
    return meta.num_rows, value.decode() if value else None


def _iter_shards(path: str, nsps: int) -> Iterator[pa.Table]:
    """The filtered list as consecutive ``nsps``-row tables, streamed (one shard in memory)."""
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in pf.iter_batches(batch_size=max(1024, min(nsps, _MAX_BATCH_ROWS))):
        offset = 0
        while offset < batch.num_rows:
            take = min(nsps - pending_rows, batch.num_rows - offset)
            pending.append(batch.slice(offset, take))
            pending_rows += take
            offset += take
            if pending_rows == nsps:
                yield pa.Table.from_batches(pending, schema)
                pending, pending_rows = [], 0
    if pending_rows:
        yield pa.Table.from_batches(pending, schema)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_shard_inputs(
    filtered_path: str, out_dir: str, number_sample_per_shard: int, oom_shard_count: int = 5
) -> list[str]:
    """Split ``filtered_path`` into ``out_dir/{shard}.parquet``; return the shard keys in order.

    Unchanged shards are left untouched (not even re-written with equal bytes); shard files of
    a previous, longer plan are removed so that no stale shard is picked up.
    """
    if number_sample_per_shard <= 0:
        raise ValueError(f"number_sample_per_shard must be > 0, got {number_sample_per_shard}")
    os.makedirs(out_dir, exist_ok=True)
    previous = read_manifest(out_dir)
    entries: list[dict[str, Any]] = []
    for shard_id, table in enumerate(_iter_shards(filtered_path, number_sample_per_shard)):
        key = shard_name(shard_id, oom_shard_count)
        name = f"{key}.parquet"
        path = os.path.join(out_dir, name)
        table = _compact(table)
        fingerprint = _fingerprint(table)
        if _existing_fingerprint(path) != (table.num_rows, fingerprint):
            metadata = {_FINGERPRINT_KEY: fingerprint.encode()}
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                pq.write_table(table.replace_schema_metadata(metadata), tmp, compression="zstd")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        entries.append({"key": key, "path": name, "rows": table.num_rows, "fingerprint": fingerprint})

    keys = [e["key"] for e in entries]
    _remove_stale(out_dir, previous, {e["path"] for e in entries}, oom_shard_count)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "source": os.path.abspath(filtered_path),
        "number_sample_per_shard": number_sample_per_shard,
        "oom_shard_count": oom_shard_count,
        "rows": sum(e["rows"] for e in entries),
        "shard_count": len(entries),
        "shards": entries,
    }
    if previous != manifest:
        data = json.dumps(manifest, indent=1).encode()
        _atomic_write_bytes(os.path.join(out_dir, MANIFEST_NAME), data)
    return keys


def _remove_stale(
    out_dir: str, previous: dict[str, Any] | None, current: set[str], oom_shard_count: int
) -> None:
    """Delete shard files that are not part of the current plan (ours by manifest or by name)."""
    stale = {e["path"] for e in (previous or {}).get("shards", []) if isinstance(e, dict) and "path" in e}
    # Shard files by name, and temp files a killed run left behind.
    pattern = re.compile(rf"^\d{{{oom_shard_count}}}\.parquet(\.[0-9a-f]{{8}}\.tmp)?$")
    stale.update(n for n in os.listdir(out_dir) if pattern.match(n))
    for name in stale - current:
        path = os.path.join(out_dir, os.path.basename(name))
        if os.path.exists(path):
            os.remove(path)
