"""Per-shard statistics: img2dataset's ``NNNNN_stats.json`` fields plus our own additions."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from typing import Any

from dataset_assets.engine.records import FAILED_TO_RESIZE, SUCCESS, SampleResult

# Distinct error strings kept per shard; the rest are folded into one bucket so a shard of
# 10 000 unique messages cannot bloat the stats file.
MAX_DISTINCT_ERRORS = 1000
OTHER_ERRORS = "other errors"
# Lower bounds of the buckets of ``short_sides`` (the original image's shorter side, px): the
# dataset card's size histogram, counted here so that the card reads stats, not parquets.
SHORT_SIDE_BUCKETS = (0, 128, 256, 512, 1024, 2048, 4096)


def short_side_bucket(width: int, height: int) -> int:
    side = min(width, height)
    return max(b for b in SHORT_SIDE_BUCKETS if side >= b)


@dataclass
class ShardStats:
    shard_id: int
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    duration: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    status_dict: dict[str, int] = field(default_factory=dict)
    bytes_downloaded: int = 0
    bytes_written: int = 0
    skipped: bool = False  # True when the shard was already complete and not downloaded again
    files: list[str] = field(default_factory=list)
    # sha256 of each committed shard file, so verification can detect later corruption.
    checksums: dict[str, str] = field(default_factory=dict)
    # Rows handled per worker process: shows how evenly one shard was spread over the cores.
    rows_per_worker: dict[str, int] = field(default_factory=dict)
    kept_from_previous_run: int = 0  # retry_failed: successes carried over, not downloaded again
    peak_worker_rss_mb: float = 0.0  # largest peak RSS of any worker process during the shard
    # Rows refused by a site's opt-out, by signal (keys of consent.SIGNALS); outages never count.
    opt_outs: dict[str, int] = field(default_factory=dict)
    # Per-shard gates judged while writing (engine/shards/gates.py): name -> passed, summary.
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # False: committed but failed a gate, so not complete for resume (downloaded again).
    # None: written before gates existed (or without them), counted as passed.
    passed_gates: bool | None = None
    # Fingerprint of the input rows the shard was built from (engine/fingerprint.py): a shard
    # whose plan input now has another one was re-planned and is not complete.
    input_fingerprint: str | None = None
    # [first, last] key written (keys are positional: each shard's lie in a range of its own,
    # so keys are unique across the dataset when every shard's do; verification checks this).
    key_range: list[str] | None = None
    # Size in bytes of each committed shard file (what verification checks on every shard).
    file_sizes: dict[str, int] = field(default_factory=dict)
    # Rows by the bucket (str of a SHORT_SIDE_BUCKETS bound) of their original shorter side.
    short_sides: dict[str, int] = field(default_factory=dict)

    def record(self, result: SampleResult) -> None:
        self.count += 1
        self.bytes_downloaded += result.bytes_downloaded
        if result.worker_pid:  # rows kept from a previous run were handled by no worker
            worker = str(result.worker_pid)
            self.rows_per_worker[worker] = self.rows_per_worker.get(worker, 0) + 1
        self.peak_worker_rss_mb = max(self.peak_worker_rss_mb, result.worker_peak_rss_kb / 1024)
        if result.original_width is not None and result.original_height is not None:
            bucket = str(short_side_bucket(result.original_width, result.original_height))
            self.short_sides[bucket] = self.short_sides.get(bucket, 0) + 1
        if result.status == SUCCESS:
            self.successes += 1
            key = SUCCESS
        else:
            if result.status == FAILED_TO_RESIZE:
                self.failed_to_resize += 1
            else:
                self.failed_to_download += 1
            key = result.error_message or result.status
            if result.opt_out:
                self.opt_outs[result.opt_out] = self.opt_outs.get(result.opt_out, 0) + 1
        if key not in self.status_dict and len(self.status_dict) >= MAX_DISTINCT_ERRORS:
            key = OTHER_ERRORS
        self.status_dict[key] = self.status_dict.get(key, 0) + 1

    @property
    def success_rate(self) -> float:
        return self.successes / self.count if self.count else 0.0

    @property
    def images_per_sec(self) -> float:
        """Images stored per second: a shard whose host was down stores none, whatever its pace.

        Computed, never read back: an older stats file's ``images_per_sec`` (rows per second,
        failures included) is ignored by ``from_json`` and recomputed from its counts here.
        """
        return self.successes / self.duration if self.duration > 0 else 0.0

    @property
    def rows_per_sec(self) -> float:
        """Rows handled per second, failures included: the engine's pace, not the dataset's."""
        return self.count / self.duration if self.duration > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["status_dict"] = dict(collections.Counter(self.status_dict).most_common())
        payload["success_rate"] = self.success_rate
        payload["images_per_sec"] = self.images_per_sec
        payload["rows_per_sec"] = self.rows_per_sec
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any], shard_id: int | None = None) -> ShardStats:
        known = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload}
        if shard_id is not None:
            known["shard_id"] = shard_id
        return cls(**known)
