"""Cut the filtered URL list into one parquet input file per shard, idempotently.

Shard ``k`` holds rows ``[k*n, (k+1)*n)`` of the filtered list, so shard ids and sample keys are
positional exactly as in img2dataset. Re-planning must not touch shard inputs whose rows did not
change: their mtimes drive Dagster's staleness and a downloader may be reading them. Each shard
file therefore carries a fingerprint of its own rows in its parquet footer; a file is rewritten
only when its fingerprint or row count differs, and every write is a temp file plus rename, so a
killed run never leaves a file that looks complete but is not. The manifest, written last, lists
the shards of the last complete run.

``out_dir`` may be remote (``s3://bucket/plan/shards``, through fsspec with ``storage_options``).
There, each shard file is one upload (an object appears whole or not at all), uploads go in
concurrent batches, and a re-plan does not read 10 000 footers: the manifest records each
file's listing stamp (size and ETag, or size, mtime and inode locally), and a file whose stamp
still matches is known to hold the fingerprint the manifest gives it. One listing replaces
a request per shard.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.engine.fingerprint import FINGERPRINT_KEY, compact, footer_fingerprint, table_fingerprint
from dataset_assets.engine.shards.layout import shard_name
from dataset_assets.io.storage import (
    StorageOptions,
    filesystem,
    full_url,
    is_local_fs,
    is_object_store_fs,
    staged_file,
)

MANIFEST_NAME = "_manifest.json"
_MANIFEST_FORMAT = 1
_MAX_BATCH_ROWS = 65_536
# Remote shard files are staged locally and uploaded this many at a time (concurrently).
_UPLOAD_BATCH = 32
_STAMP_KEYS = ("size", "ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "ino")


def read_manifest(out_dir: str, storage_options: StorageOptions | None = None) -> dict[str, Any] | None:
    """The manifest of the last complete :func:`write_shard_inputs` run, or None if there is none."""
    fs, root = filesystem(out_dir, storage_options)
    return _read_manifest(fs, root)


def _read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    try:
        with fs.open(posixpath.join(root, MANIFEST_NAME), "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _MANIFEST_FORMAT else None


def _fingerprint(table: pa.Table) -> str:
    """The fingerprint of a compacted shard (the engine's, so that stats and footers agree)."""
    return table_fingerprint(table, compacted=True)


def _existing_fingerprint(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str | None] | None:
    """(rows, fingerprint) from a shard file's footer; None if missing or unreadable."""
    return footer_fingerprint(fs, path)


def _stamp(info: dict[str, Any]) -> str:
    """What a listing says about a file that changes whenever the file is replaced."""
    return json.dumps([str(info[k]) for k in _STAMP_KEYS if info.get(k) is not None])


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """File name -> listing info for the files directly in ``root`` (one request per 1000)."""
    try:
        entries = fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {posixpath.basename(e["name"].rstrip("/")): e for e in entries if e.get("type") == "file"}


def _iter_shards(handle: Any, nsps: int) -> Iterator[pa.Table]:
    """The filtered list as consecutive ``nsps``-row tables, streamed (one shard in memory).

    Read one row group at a time: over the whole file, pyarrow's read-ahead (``pre_buffer``)
    kept every row group it had read, 2 GB for a 60 M-row list; per row group it keeps one
    (about 200 MB in all) and still coalesces a remote file's reads within it.
    """
    pf = pq.ParquetFile(handle)
    schema = pf.schema_arrow
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    batches = (
        batch
        for group in range(pf.metadata.num_row_groups)
        for batch in pf.iter_batches(batch_size=max(1024, min(nsps, _MAX_BATCH_ROWS)), row_groups=[group])
    )
    for batch in batches:
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


class _Publisher:
    """Writes shard files: local ones by temp file + rename, remote ones by batched uploads."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root
        self.remote = not is_local_fs(fs)
        self._staging = tempfile.TemporaryDirectory(prefix="plan-shards-") if self.remote else None
        self._pending: list[tuple[str, str]] = []

    def write(self, name: str, table: pa.Table) -> None:
        path = posixpath.join(self.root, name)
        if self._staging is None:
            with staged_file(path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            return
        local = os.path.join(self._staging.name, name)
        pq.write_table(table, local, compression="zstd")
        self._pending.append((local, path))
        if len(self._pending) >= _UPLOAD_BATCH:
            self.flush()

    def flush(self) -> None:
        """Upload the staged files (each becomes visible whole), then drop the local copies."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.fs.put([local for local, _ in pending], [remote for _, remote in pending])
        for local, _ in pending:
            os.remove(local)

    def write_bytes(self, name: str, data: bytes) -> None:
        path = posixpath.join(self.root, name)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        with staged_file(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)

    def close(self) -> None:
        if self._staging is not None:
            self._staging.cleanup()


def write_shard_inputs(
    filtered_path: str,
    out_dir: str,
    number_sample_per_shard: int,
    oom_shard_count: int = 5,
    *,
    storage_options: StorageOptions | None = None,
) -> list[str]:
    """Split ``filtered_path`` into ``out_dir/{shard}.parquet``; return the shard keys in order.

    Unchanged shards are left untouched (not even re-written with equal bytes); shard files of
    a previous, longer plan are removed so that no stale shard is picked up. Either path may be
    a remote URL (``storage_options`` configure its filesystem).
    """
    if number_sample_per_shard <= 0:
        raise ValueError(f"number_sample_per_shard must be > 0, got {number_sample_per_shard}")
    fs, root = filesystem(out_dir, storage_options)
    root = root.rstrip("/") or "/"
    src_fs, src_path = filesystem(filtered_path, storage_options)
    if not is_object_store_fs(fs):
        fs.makedirs(root, exist_ok=True)
    previous = _read_manifest(fs, root)
    known = {
        e["path"]: e
        for e in (previous or {}).get("shards", [])
        if isinstance(e, dict) and "path" in e and "stamp" in e
    }
    listing = _listing(fs, root)
    publisher = _Publisher(fs, root)
    entries: list[dict[str, Any]] = []
    try:
        with src_fs.open(src_path, "rb") as source:
            for shard_id, table in enumerate(_iter_shards(source, number_sample_per_shard)):
                key = shard_name(shard_id, oom_shard_count)
                name = f"{key}.parquet"
                table = compact(table)
                fingerprint = _fingerprint(table)
                wanted = (table.num_rows, fingerprint)
                if not _holds(fs, root, name, wanted, listing.get(name), known.get(name)):
                    metadata = {FINGERPRINT_KEY: fingerprint.encode()}
                    publisher.write(name, table.replace_schema_metadata(metadata))
                entries.append({"key": key, "path": name, "rows": table.num_rows, "fingerprint": fingerprint})
        publisher.flush()

        # The stamps of what is there now, for the next run (one more listing).
        listing = _listing(fs, root)
        for entry in entries:
            info = listing.get(entry["path"])
            if info is not None:
                entry["stamp"] = _stamp(info)
        keys = [e["key"] for e in entries]
        _remove_stale(fs, root, previous, {e["path"] for e in entries}, oom_shard_count, listing)
        manifest = {
            "format": _MANIFEST_FORMAT,
            "source": full_url(src_fs, src_path),
            "number_sample_per_shard": number_sample_per_shard,
            "oom_shard_count": oom_shard_count,
            "rows": sum(e["rows"] for e in entries),
            "shard_count": len(entries),
            "shards": entries,
        }
        if previous != manifest:
            publisher.write_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
    finally:
        publisher.close()
    return keys


def _holds(
    fs: fsspec.AbstractFileSystem,
    root: str,
    name: str,
    wanted: tuple[int, str],
    info: dict[str, Any] | None,
    known: dict[str, Any] | None,
) -> bool:
    """Does the shard file ``name`` already hold exactly these rows?

    The previous manifest answers when the file is unchanged since it was written (same
    listing stamp); otherwise the file's own footer does.
    """
    if info is None:
        return False
    if known is not None and known.get("stamp") == _stamp(info):
        return (known.get("rows"), known.get("fingerprint")) == wanted
    return _existing_fingerprint(fs, posixpath.join(root, name)) == wanted


def _remove_stale(
    fs: fsspec.AbstractFileSystem,
    root: str,
    previous: dict[str, Any] | None,
    current: set[str],
    oom_shard_count: int,
    listing: dict[str, dict[str, Any]],
) -> None:
    """Delete shard files that are not part of the current plan (ours by manifest or by name)."""
    stale = {e["path"] for e in (previous or {}).get("shards", []) if isinstance(e, dict) and "path" in e}
    # Shard files by name, and temp files a killed run left behind.
    pattern = re.compile(rf"^\d{{{oom_shard_count}}}\.parquet(\.[0-9a-f]{{8}}\.tmp)?$")
    stale.update(n for n in listing if pattern.match(n))
    doomed = [posixpath.join(root, posixpath.basename(n)) for n in sorted(stale - current) if n in listing]
    if doomed:
        fs.rm(doomed)
