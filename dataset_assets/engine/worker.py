"""The worker process: an event loop that fetches its own hosts, and a thread for image work.

Why two stages: decoding a 2400x1800 PNG takes ~90 ms; on the event loop that is 90 ms in
which no socket is read while every request's deadline keeps running. Here the loop only
fetches; bodies go to the worker's image thread (OpenCV releases the GIL, so the loop keeps
serving sockets meanwhile).

Why a shared image queue as well: rows are routed to workers by host (so that one worker
holds each host's budget for the whole run), which makes fetching uneven when a list has one
big host; a worker whose image thread falls behind hands bodies to the queue every worker's
idle image thread takes from, so the image work, most of the CPU, still spreads over every core.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import queue
import resource
import threading
from dataclasses import dataclass
from typing import Any

from dataset_assets.engine.consent.xmp import datamining_refusal
from dataset_assets.engine.fetch import Fetcher, FetchError, RequestWindow, looks_like_image
from dataset_assets.engine.image import ImageProcessor, ImageRejected
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import (
    FAILED_TO_DOWNLOAD,
    FAILED_TO_RESIZE,
    INTERNAL_ERROR,
    SUCCESS,
    FetchTask,
    SampleResult,
)

RESULT_BATCH = 32
RESULT_FLUSH_S = 0.05
PARENT_CHECK_S = 1.0
# Rows a worker holds at once (waiting for their host, in flight, or being processed). Rows are
# small; a large window lets rows of other hosts overtake a slow host's backlog.
MIN_ROW_WINDOW = 4096
EXIT_IMAGE_THREAD_DIED = 4
LOCAL_BACKLOG = 2  # bodies waiting for this worker's own image thread before others are asked
IDLE_POLL_S = 0.005  # an idle image thread looks at the shared queue this often at first,
MAX_IDLE_POLL_S = 0.04  # and at least this often however long it stays idle
TRIM_AFTER_BYTES = 1024 * 1024  # bodies this large leave big freed buffers behind (see below)
SEND_AT_EXIT_S = 5.0  # a worker told to stop sends its last results within this
OPEN_FILES_WANTED = 65_536  # sockets a worker may hold (see raise_open_files_limit)


@dataclass(slots=True)
class ImageJob:
    """A downloaded body on its way to the image stage (of any worker)."""

    task: FetchTask
    data: bytes


class BusySlot:
    """Where a worker's image thread writes the row it is processing, in memory the parent reads.

    Why shared memory and not a message: a body may be processed by another worker than the one
    that fetched it, and a worker killed mid-decode (a codec crash, the OOM killer) sends nothing
    more; the parent reads the dead worker's slot to know which row took it down.
    """

    IDLE = -1

    def __init__(self, cells: Any, slot: int) -> None:
        self._cells = cells
        self._at = 2 * slot

    def hold(self, task: FetchTask) -> None:
        self._cells[self._at + 1] = task.index  # index first: the shard id makes the slot valid
        self._cells[self._at] = task.shard_id

    def release(self) -> None:
        self._cells[self._at] = self.IDLE

    def held(self) -> tuple[int, int] | None:
        shard_id = self._cells[self._at]
        return None if shard_id == self.IDLE else (shard_id, self._cells[self._at + 1])


def worker_main(
    options: DownloadOptions, tasks: Any, bodies: Any, results: Any, parent_pid: int, busy: BusySlot
) -> None:
    """Process entry point (top-level so that spawn can import it)."""
    raise_open_files_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options, tasks, bodies, results, parent_pid, busy))


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """Raise this process's soft limit on open files towards its hard limit (never lower it).

    Why: a worker holds a socket for every connection in flight or kept alive, and on a long
    tail the policy files of the origins just ahead keep one open each: about 600 per worker
    in the long-tail bench, more with fewer processes. Many systems start processes with a soft
    limit of 1024 (macOS 256) under a far higher hard one; past it every new connection fails
    with EMFILE, which would count against the hosts as failures.
    """
    with contextlib.suppress(ValueError, OSError):  # not allowed here: the limit stays
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def peak_rss_kb() -> int:
    """This process's own peak RSS. Linux's ``ru_maxrss`` keeps the high-water mark of the
    process that forked and exec'd us (a 440 MB test runner made every worker look 440 MB);
    ``VmHWM`` is this address space's alone."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Outbox:
    """Results leave in batches, from the loop (failures) and the image thread (images).

    A thread of its own writes them to the parent's pipe, so neither the loop nor the image
    thread ever waits on a full pipe.
    """

    def __init__(self, results: Any) -> None:
        self._pipe = results
        self._batch: list[SampleResult] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._peak_rss_kb = 0
        self._outgoing: queue.SimpleQueue[list[SampleResult] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, name="result-sender", daemon=True)
        self._sender.start()
        self.measure()

    def measure(self) -> None:
        """Refresh the peak RSS that results carry (periodically, not per row)."""
        self._peak_rss_kb = peak_rss_kb()

    def add(self, result: SampleResult) -> None:
        result.worker_pid = self._pid
        result.worker_peak_rss_kb = self._peak_rss_kb
        with self._lock:
            self._batch.append(result)
            full = len(self._batch) >= RESULT_BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        if batch:
            self._outgoing.put(batch)

    def close(self, timeout_s: float = SEND_AT_EXIT_S) -> None:
        """Send what is left, then stop the sender (waits at most ``timeout_s``)."""
        self.flush()
        self._outgoing.put(None)
        self._sender.join(timeout_s)

    def _send_all(self) -> None:
        while (batch := self._outgoing.get()) is not None:
            try:
                self._pipe.send(batch)
            except OSError:  # the parent is gone; the watchdog ends this process
                return


class ImageStage:
    """Check, hash and process a downloaded body. Never raises for bad input."""

    def __init__(self, options: DownloadOptions) -> None:
        self._options = options
        self._processor = ImageProcessor(options)

    def handle(self, job: ImageJob) -> SampleResult:
        task, data = job.task, job.data
        result = SampleResult(task.shard_id, task.index, FAILED_TO_DOWNLOAD, bytes_downloaded=len(data))
        options = self._options
        if options.respect_xmp_datamining:
            refusal = datamining_refusal(data)
            if refusal is not None:
                result.error_message = f"disallowed by IPTC plus:DataMining ({refusal}) in the image's XMP"
                result.opt_out = "xmp-datamining"
                return result
        digest = hashlib.new(options.compute_hash, data).hexdigest() if options.compute_hash else None
        if task.expected_hash is not None and digest != task.expected_hash:
            result.error_message = "hash mismatch"
            return result
        try:
            processed = self._processor.process(data, task.bboxes)
        except ImageRejected as error:
            result.status = FAILED_TO_RESIZE
            result.error_message = str(error)
            return result
        result.status = SUCCESS
        result.image = processed.data
        result.width = processed.width
        result.height = processed.height
        result.original_width = processed.original_width
        result.original_height = processed.original_height
        result.exif = processed.exif
        result.hash = digest
        return result


def _internal_error(task: FetchTask, error: BaseException) -> SampleResult:
    return SampleResult(
        task.shard_id,
        task.index,
        FAILED_TO_DOWNLOAD,
        error_message=f"{INTERNAL_ERROR}: {type(error).__name__}: {error}",
    )


class ImageHandoff:
    """Where downloaded bodies wait for image work: this worker's own thread first, then any.

    Why local first: a body that crosses processes is pickled, piped and unpickled (about 15 %
    of the CPU an image costs). With hosts spread over the workers, each one's own thread keeps
    up; only when it falls behind (a worker owning a huge host) do bodies go to the queue that
    every worker's idle image thread takes from.
    """

    def __init__(self, shared: Any, window: RequestWindow, loop: asyncio.AbstractEventLoop) -> None:
        self._shared = shared
        self._local: queue.SimpleQueue[ImageJob] = queue.SimpleQueue()
        self._window = window
        self._loop = loop
        # Whether the loop has been asked to let waiting requests in: one wake-up covers every
        # image done meanwhile.
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    def put(self, job: ImageJob) -> None:
        """From the event loop; never blocks. A local body stays in the window until processed."""
        if self._local.qsize() >= LOCAL_BACKLOG:
            try:
                self._shared.put_nowait(job)
            except queue.Full:  # every worker is behind: keep it here
                pass
            else:
                self._window.release(len(job.data))
                return
        self._local.put(job)

    def get(self) -> tuple[ImageJob, bool]:
        """From the image thread: (job, whether it was this worker's own).

        Why wait only when both queues are empty: a thread helping a worker that owns a huge
        host used to wait out the idle poll before each body it took from the shared queue,
        so it helped at a fraction of its speed. An idle thread looks at the shared queue less
        often the longer it stays idle (its own bodies wake it at once).
        """
        idle_wait = IDLE_POLL_S
        while True:
            try:
                job = self._local.get_nowait()
            except queue.Empty:
                pass
            else:
                self._spill()
                return job, True
            try:
                return self._shared.get_nowait(), False
            except queue.Empty:
                pass
            try:
                return self._local.get(timeout=idle_wait), True
            except queue.Empty:
                idle_wait = min(2 * idle_wait, MAX_IDLE_POLL_S)

    def _spill(self) -> None:
        """From the image thread: this worker's backlog beyond LOCAL_BACKLOG goes to the shared
        queue while it has room (only an idle image thread makes room there).

        Why: :meth:`put` sends a body to the shared queue only as it arrives. Once the other
        workers ran out of rows, the bodies already waiting here (hundreds, as many as the
        window's bytes allow) were left to this worker's thread alone: on the mixed corpus,
        one core idled for the last second of a nine-second run.
        """
        while self._local.qsize() > LOCAL_BACKLOG and not self._shared.full():
            try:
                job = self._local.get_nowait()
            except queue.Empty:
                return
            try:
                self._shared.put_nowait(job)
            except queue.Full:  # another worker took the room first
                self._local.put(job)
                return
            self._give_back(len(job.data))

    def done(self, job: ImageJob, local: bool) -> None:
        """From the image thread: the body leaves the window."""
        if local:
            self._give_back(len(job.data))

    def _give_back(self, size: int) -> None:
        """The loop is woken only when a request waits for room (see
        RequestWindow.give_back_from_thread), and once for every body given back before it runs."""
        if not self._window.give_back_from_thread(size):
            return
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing waits anymore
            self._loop.call_soon_threadsafe(self._wake_window)

    def _wake_window(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        self._window.wake()


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator has no such call
        return None


_MALLOC_TRIM = _malloc_trim()


def _give_back_free_memory() -> None:
    """After a large image: glibc keeps the freed pages of its big buffers (its mmap threshold
    grows with them), which took a worker on a PNG-heavy list past 700 MB; trimming returns
    them and kept it under 300 MB. A fixed mmap threshold would do the same for every
    image and cost about 40 % more CPU."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _image_thread(options: DownloadOptions, handoff: ImageHandoff, outbox: Outbox, busy: BusySlot) -> None:
    """Runs until the process exits; if it ever dies, the process dies (the parent notices)."""
    try:
        stage = ImageStage(options)
        while True:
            job, local = handoff.get()
            busy.hold(job.task)
            try:
                result = stage.handle(job)
            except Exception as error:  # a bug must not lose the row
                result = _internal_error(job.task, error)
            handoff.done(job, local)
            outbox.add(result)
            busy.release()
            if len(job.data) >= TRIM_AFTER_BYTES:
                _give_back_free_memory()
    finally:
        outbox.close()
        os._exit(EXIT_IMAGE_THREAD_DIED)


async def fetch_stage(task: FetchTask, fetcher: Fetcher) -> SampleResult | ImageJob:
    """A failure's result, or the body for the image stage (held in the fetcher's window)."""
    result = SampleResult(task.shard_id, task.index, FAILED_TO_DOWNLOAD)
    if not task.url:
        result.error_message = "missing URL"
        return result
    try:
        body = await fetcher.fetch(task.url)
    except FetchError as error:
        result.error_message = str(error)
        result.opt_out = error.opt_out
        return result
    data = body.data
    result.bytes_downloaded = len(data)
    if not data:
        result.error_message = "empty body"
    elif not looks_like_image(data) and not body.content_type.lower().startswith("image/"):
        kind = body.content_type.split(";", 1)[0].strip() or "no content type"
        result.error_message = f"not an image ({kind})"
    else:
        return ImageJob(task, data)
    fetcher.window.release(len(data))
    return result


async def _serve(
    options: DownloadOptions, tasks: Any, bodies: Any, results: Any, parent_pid: int, busy: BusySlot
) -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(results)
    watchdog = asyncio.create_task(_exit_if_orphaned(parent_pid))
    flusher = asyncio.create_task(_flush_periodically(outbox))
    # One thread blocks on the task queue, so the loop never does.
    reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-reader")
    rows = asyncio.Semaphore(max(MIN_ROW_WINDOW, 4 * options.thread_count))
    running: set[asyncio.Task[None]] = set()
    try:
        async with Fetcher(options) as fetcher:
            handoff = ImageHandoff(bodies, fetcher.window, loop)
            threading.Thread(
                target=_image_thread, args=(options, handoff, outbox, busy), name="image-stage", daemon=True
            ).start()

            async def run_one(task: FetchTask) -> None:
                try:
                    outcome = await fetch_stage(task, fetcher)
                    if isinstance(outcome, ImageJob):
                        handoff.put(outcome)
                        return
                except Exception as error:  # a bug must not lose the row
                    outcome = _internal_error(task, error)
                outbox.add(outcome)

            while True:
                chunk = await loop.run_in_executor(reader, tasks.get)
                if chunk is None:
                    break
                for task in chunk:
                    await rows.acquire()
                    job = asyncio.create_task(run_one(task))
                    running.add(job)
                    job.add_done_callback(running.discard)
                    job.add_done_callback(lambda _: rows.release())
            if running:
                await asyncio.gather(*running)
    finally:
        flusher.cancel()
        watchdog.cancel()
        outbox.close()
        reader.shutdown(wait=False, cancel_futures=True)


async def _flush_periodically(outbox: Outbox) -> None:
    while True:
        await asyncio.sleep(RESULT_FLUSH_S)
        outbox.measure()
        outbox.flush()


async def _exit_if_orphaned(parent_pid: int) -> None:
    """Exit if the parent died (even by SIGKILL): a worker must never outlive its shard runner."""
    while True:
        await asyncio.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(3)
