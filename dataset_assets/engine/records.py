"""Plain records exchanged between the worker processes and the shard writer.

They are small and picklable on purpose: a result crosses a process boundary once, carrying
only the encoded image and the per-row metadata (the input row itself stays in the parent).
"""

from __future__ import annotations

from dataclasses import dataclass

SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
FAILED_TO_RESIZE = "failed_to_resize"
# How a bug (an exception no stage expected) is recorded: the row's error_message starts so.
INTERNAL_ERROR = "internal error"


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
    opt_out: str | None = None  # the signal that refused the row (a key of consent.SIGNALS)


class ImageRejected(Exception):
    """Raised for any image that cannot be stored; str(exc) is the per-row error_message."""
