"""Plain records exchanged between the worker processes and the shard writer.

They are small and picklable on purpose: a result crosses a process boundary once, carrying
only the encoded image and the per-row metadata (the input row itself stays in the parent).
"""

from __future__ import annotations

from dataclasses import dataclass

SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
FAILED_TO_RESIZE = "failed_to_resize"


@dataclass(slots=True)
class FetchTask:
    """One row of a shard, reduced to what a worker needs to fetch and process it."""

    shard_id: int
    index: int  # position of the row inside its shard; the key is derived from it
    url: str
    bboxes: list[list[float]] | None = None
    expected_hash: str | None = None


@dataclass(slots=True)
class SampleResult:
    """The outcome for one input row; every row produces exactly one."""

    shard_id: int
    index: int
    status: str
    error_message: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    exif: str | None = None
    hash: str | None = None
    bytes_downloaded: int = 0
    worker_pid: int = 0
    worker_peak_rss_kb: int = 0  # the worker's peak memory so far (ru_maxrss)


def compute_key(index: int, shard_id: int, number_sample_per_shard: int, oom_shard_count: int) -> str:
    """img2dataset's positional key: shard id and row index, zero-padded, stable across re-runs."""
    # ceil(log10(nsps)) digits for the row: 4 for nsps=10000 (SSSSSIIII), 1 for nsps=3.
    oom_sample = key_digits(number_sample_per_shard)
    value = 10**oom_sample * shard_id + index
    return str(value).zfill(oom_sample + oom_shard_count)


def key_digits(n: int) -> int:
    """ceil(log10(n)) in integers: the digits a row index takes in a key."""
    digits = 0
    power = 1
    while power < n:
        power *= 10
        digits += 1
    return digits


def shard_name(shard_id: int, oom_shard_count: int) -> str:
    return str(shard_id).zfill(oom_shard_count)
