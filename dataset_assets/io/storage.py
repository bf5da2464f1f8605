"""The output folder, through fsspec, with atomic commits (local disk, S3 and other object stores).

Every shard file is written under ``_tmp/`` and moved into place when complete; the stats
json is written last and is the completion marker (img2dataset's convention, so its tools and
our resume logic agree). A killed process therefore leaves only ``_tmp`` debris, never a
complete-looking ``NNNNN.tar``; a run that ends removes ``_tmp`` if it is empty.

On an object store (``s3://``, MinIO, R2, ``gs://``...) there is no rename, but each object
appears atomically: a PUT or a completed multipart upload is visible whole or not at all. A
shard file is written to ``_tmp/`` (an interrupted upload creates no object; an aborted writer
only ever completes a ``_tmp`` object) and then server-side copied to its final name, so a
final name always holds a complete file; the stats json is one PUT. What a killed process can
leave is ``_tmp/`` objects and incomplete multipart uploads (invisible, but billed): expire both
with a bucket lifecycle rule (deploy/README.md).

Credentials and endpoints come from ``storage_options``, the plain keyword arguments of the
fsspec filesystem (for s3fs: ``key``, ``secret``, ``token``, ``endpoint_url``,
``client_kwargs={"region_name": ...}``), flat or per protocol (:func:`options_for`); without
them s3fs uses the standard AWS environment variables and credential chain. They apply to remote
URLs only, and an :class:`OutputFolder` pickles as (url, storage_options), so it can be handed to
other processes.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec

TMP_DIR = "_tmp"

StorageOptions = Mapping[str, Any]

# Filesystems without real directories or renames: commits are copies, JSON is one PUT.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    """The filesystem's first protocol name (``s3`` for s3fs's ("s3", "s3a"))."""
    return _protocols(fs)[0]


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """A filesystem on this machine's disk (renames are atomic)."""
    return bool(set(_protocols(fs)) & _LOCAL_PROTOCOLS)


def is_object_store_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """A filesystem without real directories or renames: publishing is a whole-object write."""
    return bool(set(_protocols(fs)) & OBJECT_STORE_PROTOCOLS)


def url_protocol(url: str) -> str:
    """``s3`` for ``s3://b/k``, ``file`` for a plain path."""
    return fsspec.utils.get_protocol(os.fspath(url))


def is_remote_url(url: str) -> bool:
    return url_protocol(url) not in _LOCAL_PROTOCOLS


def options_for(url: str, storage_options: StorageOptions | None) -> dict[str, Any]:
    """The options that apply to ``url``.

    ``storage_options`` is either flat (applies to every remote URL), or per protocol, e.g.
    ``{"s3": {...}, "s3a": {...}}`` when a spec mixes an ``https://`` URL list with an S3
    output (S3 keys would break the HTTP filesystem).
    """
    if not storage_options:
        return {}
    if set(storage_options) <= set(fsspec.available_protocols()):
        return dict(storage_options.get(url_protocol(url)) or {})
    return dict(storage_options)


def filesystem(
    url: str, storage_options: StorageOptions | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for ``url``; ``storage_options`` apply to remote URLs only.

    Remote filesystems get ``use_listings_cache=False`` unless told otherwise: other processes
    (other shard runs, other machines) write to the same prefix, and a cached listing would
    answer "does this shard's stats file exist" with a stale "no" (or "yes").
    """
    url = os.fspath(url)
    if not is_remote_url(url):
        return fsspec.core.url_to_fs(url)
    options = {"use_listings_cache": False, **options_for(url, storage_options)}
    return fsspec.core.url_to_fs(url, **options)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path inside ``fs`` as a URL (``s3://bucket/key``), or as a local absolute path."""
    if set(_protocols(fs)) & _LOCAL_PROTOCOLS:
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def read_parquet(url: str, storage_options: StorageOptions | None = None, **kwargs: Any) -> Any:
    """``pyarrow.parquet.read_table`` of a local or remote file (returns a ``pyarrow.Table``)."""
    import pyarrow.parquet as pq

    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, **kwargs)


def text_files(url: str, storage_options: StorageOptions | None = None) -> list[str]:
    """The files a "file or folder of files" setting names, as full URLs, in sorted order.

    A folder's hidden (``.``) and bookkeeping (``_``) files are left out. Raises
    FileNotFoundError naming ``url`` when there is nothing there.
    """
    fs, path = filesystem(url, storage_options)
    if fs.isdir(path):
        found = sorted(
            p for p in fs.find(path) if not posixpath.basename(p).startswith((".", "_")) and fs.isfile(p)
        )
        return [full_url(fs, p) for p in found]
    if not fs.isfile(path):
        raise FileNotFoundError(url)
    return [url]


def iter_text_lines(url: str, storage_options: StorageOptions | None = None) -> Iterator[str]:
    """The lines of one local or remote UTF-8 text file, without their line ends, streamed."""
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rt", encoding="utf-8", errors="strict", newline=None) as handle:
        for line in handle:
            yield line.rstrip("\r\n")


@contextlib.contextmanager
def staged_file(output_path: str, storage_options: StorageOptions | None = None) -> Iterator[str]:
    """A local file to write, published at ``output_path`` only if the block completes.

    The one door for files that a library (DuckDB's COPY, pyarrow) must write to a local path.

    Local output: a temp file beside it, then an atomic rename. Remote output: a local temp
    file, then one upload (a single object PUT or a completed multipart upload, visible whole
    or not at all); a failure before the upload completes leaves the old object, if any.
    """
    if is_remote_url(output_path):
        fs, remote = filesystem(output_path, storage_options)
        with tempfile.TemporaryDirectory(prefix="dataset-assets-stage-") as folder:
            local = os.path.join(folder, os.path.basename(remote) or "output.parquet")
            yield local
            fs.put_file(local, remote)
        return
    parent = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(output_path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# What os.link raises where the filesystem has no hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def _create_then_write(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


class _DigestingFile:
    """A write handle that hashes the bytes passing through it.

    The shard writer records each file's sha256 before committing it; remembering the digest of
    what was written spares reading the file back (a second download of every tar on S3).
    Everything but ``write``/``close`` is the underlying handle's.
    """

    def __init__(self, raw: IO[bytes], path: str, digests: dict[str, tuple[str, int]]) -> None:
        self._raw = raw
        self._path = path
        self._digests = digests
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: Any) -> int:
        written = self._raw.write(data)
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._size += view.nbytes
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        if self._raw.closed:
            return
        self._raw.close()
        self._digests[self._path] = (self._hash.hexdigest(), self._size)

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def __enter__(self) -> _DigestingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class OutputFolder:
    def __init__(self, url: str, storage_options: StorageOptions | None = None) -> None:
        self.url = os.fspath(url)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        # (sha256, size) of temporary files written through open_tmp, until they are committed.
        self._digests: dict[str, tuple[str, int]] = {}
        fs, root = filesystem(self.url, self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/") or "/"
        if not self.is_object_store:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)

    def __reduce__(self) -> tuple[Any, ...]:
        # The filesystem object (event loops, sessions) is rebuilt on the other side.
        return (type(self), (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"OutputFolder({self.url!r})"

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    @property
    def is_object_store(self) -> bool:
        return is_object_store_fs(self.fs)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url_of(self, *parts: str) -> str:
        """A file's full URL (``s3://bucket/prefix/00000.tar``), for logs and metadata."""
        return full_url(self.fs, self.path(*parts))

    def tmp_path(self, final_name: str) -> str:
        """A unique temporary name, so two writers of one shard never collide.

        Flat under ``_tmp/`` even for a final name in a subfolder (``_reports/x.json``), so the
        temporary file never needs a folder of its own.
        """
        return self.path(TMP_DIR, f"{uuid.uuid4().hex[:12]}.{final_name.replace('/', '.')}")

    def open_tmp(self, final_name: str) -> tuple[str, IO[bytes]]:
        tmp = self.tmp_path(final_name)
        if not self.is_object_store:
            # A run that ended may have removed the empty folder (remove_empty_tmp).
            self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)
        return tmp, _DigestingFile(self.fs.open(tmp, "wb"), tmp, self._digests)  # type: ignore[return-value]

    def commit(self, tmp: str, final_name: str) -> None:
        """Move a finished temporary file or folder to its final name, replacing any old one.

        Object stores: a file is server-side copied (the final object appears whole, replacing
        an old one atomically) and the temporary object deleted. A folder (``files`` format) is
        copied object by object; it is complete only once the shard's stats json exists.
        """
        final = self.path(final_name)
        self._digests.pop(tmp, None)
        if self.is_object_store:
            if self.fs.isfile(tmp):
                self.fs.copy(tmp, final)
                self.fs.rm(tmp)
                return
            if self.fs.exists(final):
                self.fs.rm(final, recursive=True)
            self.fs.copy(tmp, final, recursive=True)
            self.fs.rm(tmp, recursive=True)
            return
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)  # _reports/ on first use
        self.fs.mv(tmp, final, recursive=True)

    def write_bytes_atomic(self, final_name: str, data: bytes) -> None:
        """``data`` under ``final_name``, never visible half-written."""
        if self.is_object_store:
            # One PUT: the object is replaced whole or not at all; nothing to clean up.
            self.fs.pipe_file(self.path(final_name), data)
            return
        tmp, handle = self.open_tmp(final_name)
        try:
            with handle:
                handle.write(data)
            self.commit(tmp, final_name)
        except BaseException:
            self.discard(tmp)
            raise

    def write_json_atomic(self, final_name: str, payload: dict[str, Any]) -> None:
        self.write_bytes_atomic(final_name, json.dumps(payload, indent=4, default=str).encode())

    def sha256(self, path: str) -> str:
        """The file's sha256: remembered if it was written through :meth:`open_tmp` (and its size
        agrees with what went through the handle), else read back."""
        known = self._digests.get(path)
        if known is not None and self.fs.size(path) == known[1]:
            return known[0]
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def written_digest(self, tmp: str) -> tuple[str, int] | None:
        """(sha256, size) of what went through :meth:`open_tmp`'s handle for ``tmp``, if it did."""
        return self._digests.get(tmp)

    def size(self, name: str) -> int:
        """The size of a committed file, from its metadata (a HEAD on an object store)."""
        return int(self.fs.size(self.path(name)))

    def create_exclusive(self, final_name: str, data: bytes) -> bool:
        """Write ``data`` under ``final_name`` only if nothing is there; False if something is.

        Local disk: the data goes to a file of its own first, then a hard link gives it the
        final name, which fails atomically when the name exists; so the file is never seen
        empty or half written, even when the writer is killed mid-way (an ``O_EXCL`` create
        followed by a write left an empty file behind that way, which read as a live holder).
        S3 (and S3-compatible stores that honour it): a PUT with
        ``If-None-Match: *``, which the store refuses atomically when the key exists. Other
        filesystems get a check-then-write that is NOT exclusive; :mod:`~dataset_assets.engine.
        shards.lease` documents what that costs.
        """
        path = self.path(final_name)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            staged = f"{path}.{uuid.uuid4().hex}.staged"
            try:
                with open(staged, "wb") as handle:
                    handle.write(data)
                try:
                    os.link(staged, path)
                except FileExistsError:
                    return False
                except OSError as error:
                    if error.errno not in _NO_HARD_LINKS:
                        raise
                    return _create_then_write(path, data)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged)
            return True
        if protocol_of(self.fs) in ("s3", "s3a"):
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            return True
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def remove(self, name: str) -> None:
        """Delete one file if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(name))

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def modified_at(self, name: str) -> float | None:
        """When ``name`` was last written (epoch seconds), or None if the store does not say."""
        path = self.path(name)
        try:
            return self.fs.modified(path).timestamp()  # local, s3fs, gcsfs and adlfs say
        except NotImplementedError:
            pass
        info = self.fs.info(path)
        stamp = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("updated"))))
        if isinstance(stamp, str):
            with contextlib.suppress(ValueError):
                stamp = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if isinstance(stamp, datetime.datetime):
            return stamp.timestamp()
        return float(stamp) if isinstance(stamp, int | float) else None

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "rb") as handle:
            return json.loads(handle.read())

    def discard(self, tmp: str) -> None:
        self._digests.pop(tmp, None)
        try:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
        except OSError:
            pass

    def tmp_entries(self) -> list[str]:
        """What is under ``_tmp/`` now (files, and folders of the ``files`` format)."""
        tmp = self.path(TMP_DIR)
        try:
            return sorted(self.fs.ls(tmp, detail=False))
        except FileNotFoundError:
            return []

    def remove_empty_tmp(self) -> None:
        """Remove ``_tmp/`` if nothing is in it, so a finished run leaves only the dataset.

        Only an empty folder goes (the removal itself refuses a non-empty one, so there is no
        window in which another run's file could be lost); writers recreate it when they need
        it. Object stores have no folders to remove.
        """
        if self.is_object_store:
            return
        with contextlib.suppress(OSError):
            self.fs.rmdir(self.path(TMP_DIR))

    def clean_tmp(self) -> None:
        """Remove ``_tmp`` debris left by killed runs.

        Call only when no writer is active on this output folder (on a cluster, other shard
        runs may be writing): a bucket lifecycle rule on ``_tmp/`` is the concurrent-safe way.
        """
        for entry in self.tmp_entries():
            self.discard(entry)
