"""Where a dataset came from, in figures a reader can check: hashes, versions, crawl times.

Why on the card: "built from urls.parquet" says nothing once that file has been rewritten. A
hash of the URL list, a fingerprint of the rows the shards were actually built from (recorded
by each shard's writer), the spec's hash and the code's version let anyone tell whether their
copy of the inputs is the one this dataset came from, and rebuild it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dataset_assets
from dataset_assets.io.sources import list_input_files
from dataset_assets.io.storage import StorageOptions, filesystem

# The URL list is hashed when it is at most this big (the card is one more read of it);
# a larger one, or one of unknown size, is identified by its listing (names, sizes, ETags or
# modification times).
HASH_LIMIT_BYTES = 256 * 1024 * 1024
_CHUNK = 4 * 1024 * 1024
_GIT_TIMEOUT_S = 5


@dataclass(frozen=True)
class InputDigest:
    """The URL list's identity: ``kind`` says what ``digest`` is a hash of."""

    files: int
    bytes: int
    kind: str  # "sha256" (content) or "listing" (names, sizes and versions)
    digest: str


def input_digest(
    url_list: str, input_format: str, storage_options: StorageOptions | None = None
) -> InputDigest:
    """The sha256 of the URL list's bytes (one file: exactly ``sha256sum``'s; several: the sha256
    of their sha256 hex digests, one a line, in input order); its listing's when too large.

    Raises OSError or ValueError (InputError) when the list cannot be listed or read now.
    """
    files = list_input_files(url_list, input_format, storage_options)
    infos = []
    for name in files:
        fs, path = filesystem(name, storage_options)
        infos.append((fs, path, fs.info(path)))
    sizes = [info.get("size") for _, _, info in infos]
    total = sum(int(size or 0) for size in sizes)
    # A size the store does not tell (some HTTP servers) could be anything: not read blind.
    if total > HASH_LIMIT_BYTES or any(size is None for size in sizes):
        listing = hashlib.sha256()
        for _, path, info in infos:
            version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
            listing.update(f"{Path(path).name}\t{info.get('size')}\t{version}\n".encode())
        return InputDigest(len(files), total, "listing", listing.hexdigest())
    digests = []
    for fs, path, _ in infos:
        content = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                content.update(chunk)
        digests.append(content.hexdigest())
    if len(digests) == 1:
        return InputDigest(1, total, "sha256", digests[0])
    combined = hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()
    return InputDigest(len(files), total, "sha256", combined)


def rows_fingerprint(shard_fingerprints: Iterable[tuple[str, str]]) -> str:
    """One digest of the shards' input fingerprints (``key<TAB>fingerprint`` lines, key order)."""
    lines = "".join(f"{key}\t{fp}\n" for key, fp in sorted(shard_fingerprints))
    return hashlib.blake2b(lines.encode(), digest_size=16).hexdigest()


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the spec as canonical JSON (sorted keys, no spaces): the appendix's spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """``dataset_assets 0.1.0``, plus the git commit when the package runs from a checkout of it.

    Only a checkout whose top level holds this package counts: a package installed into some
    other project's tree must not report that project's commit.
    """
    version = f"dataset_assets {dataset_assets.__version__}"
    package = Path(dataset_assets.__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return version
    if len(top) == 2 and Path(top[0]).resolve() == package.parent:
        return f"{version}, git commit {top[1][:12]}"
    return version


def utc(timestamp: float) -> str:
    return f"{dt.datetime.fromtimestamp(timestamp, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


@dataclass
class CrawlWindow:
    """The earliest shard start and latest shard end of the stats read (0 = not recorded)."""

    start: float = 0.0
    end: float = 0.0

    def add(self, start: float, end: float) -> None:
        if start > 0:
            self.start = min(self.start, start) if self.start else start
        if end > 0:
            self.end = max(self.end, end)
