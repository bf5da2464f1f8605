"""The sample counts trainers read: open_clip's ``__len__`` and ``sizes.json``.

Why once per run and not at each commit: a shard's count is already in its stats file
(``successes``, exactly the samples its container holds), while a dataset-wide file rewritten
at each commit would cost O(shards) per shard. The component that runs once per run (the end of
``dataset-assets download``, the end of a Dagster run's engine pool, the verification roll-up)
lists the stats files once (one LIST per 1000 objects on S3), reads only those whose listing
token (ETag or inode/mtime, and size) changed since the cache was written, and publishes every
file atomically. Two runs ending together may each miss the other's last shards; the next run,
or the roll-up, lists them again, so the files converge on what the stats say.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.shards.layout import (
    LEN_NAME,
    SAMPLE_COUNTS_CACHE,
    SIZES_NAME,
    parquet_name,
    shard_of_stats,
)
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.io.storage import OutputFolder


@dataclass
class SampleCounts:
    """What was published: samples per container name, and stats files that could not be read."""

    sizes: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def _token(info: dict[str, Any]) -> str:
    """Changes whenever the object is replaced: ETag on object stores, inode and mtime on disk."""
    parts = (info.get("ETag"), info.get("ino"), info.get("mtime"), info.get("LastModified"), info.get("size"))
    return ":".join(str(p) for p in parts if p is not None)


def _container(options: DownloadOptions, shard: str) -> str | None:
    """The file a trainer lists for this shard, or None when the format stores no samples."""
    fmt = shard_format(options.output_format)
    container = fmt.container(shard)
    if container is None and fmt.images_in_parquet:
        return parquet_name(shard)
    return container


def _load_cache(output: OutputFolder) -> dict[str, list[Any]]:
    """{stats name: [token, successes]}; an unreadable cache is only a slower run."""
    try:
        cache = output.read_json(SAMPLE_COUNTS_CACHE)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def publish_sample_counts(output: OutputFolder, options: DownloadOptions) -> SampleCounts:
    """Rewrite ``__len__`` (and ``sizes.json`` with the option) from the committed stats files."""
    if _container(options, "0") is None:
        return SampleCounts()  # output_format dummy: no samples stored, nothing to count
    listing = {
        posixpath.basename(info["name"]): info
        for info in output.fs.ls(output.root, detail=True)
        if info.get("type") == "file" and shard_of_stats(posixpath.basename(info["name"]))
    }
    cached = _load_cache(output)
    fresh: dict[str, list[Any]] = {}
    stale: list[str] = []  # paths of stats files to read
    for name, info in listing.items():
        token = _token(info)
        entry = cached.get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == token:
            fresh[name] = entry
        else:
            stale.append(output.path(name))
    counts = SampleCounts()
    if stale:
        # Concurrent reads on object stores; a file replaced since the listing is left out.
        for path, payload in output.fs.cat(stale, on_error="return").items():
            name = posixpath.basename(path)
            try:
                if isinstance(payload, BaseException):
                    raise payload
                successes = int(json.loads(payload)["successes"])
            except (OSError, ValueError, KeyError, TypeError):
                counts.unreadable.append(name)
                continue
            fresh[name] = [_token(listing[name]), successes]
    for name in sorted(fresh):
        container = _container(options, str(shard_of_stats(name)))
        if container is not None:
            counts.sizes[container] = int(fresh[name][1])
    if options.sizes_json:
        sizes = json.dumps(counts.sizes, separators=(",", ":")).encode()
        output.write_bytes_atomic(SIZES_NAME, sizes)
    elif output.exists(SIZES_NAME):
        # open_clip prefers sizes.json to __len__: one left from an earlier run would go stale.
        output.fs.rm(output.path(SIZES_NAME))
    output.write_bytes_atomic(LEN_NAME, f"{counts.total}\n".encode())
    output.write_bytes_atomic(SAMPLE_COUNTS_CACHE, json.dumps(fresh, separators=(",", ":")).encode())
    counts.unreadable.sort()
    return counts
