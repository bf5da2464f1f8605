"""The worker process: one event loop doing both the network I/O and the image CPU work.

Why not img2dataset's split (threads fetch, one main thread resizes): with the decode in the
same loop, a process needs no thread hand-off per image and the loop naturally stops pulling
new rows while it is busy with CPU work, so one process per core saturates that core.
Tasks arrive in chunks on a multiprocessing queue; results leave in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import queue
import resource
import time
from typing import Any

from dataset_assets.engine.fetch import Fetcher, FetchError, looks_like_image
from dataset_assets.engine.image import ImageProcessor, ImageRejected
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import (
    FAILED_TO_DOWNLOAD,
    FAILED_TO_RESIZE,
    SUCCESS,
    FetchTask,
    SampleResult,
)

RESULT_BATCH = 32
RESULT_FLUSH_S = 0.05
PARENT_CHECK_S = 1.0


def worker_main(options: DownloadOptions, tasks: Any, results: Any, parent_pid: int) -> None:
    """Process entry point (top-level so that spawn can import it)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options, tasks, results, parent_pid))


class SampleHandler:
    """Turns one task into one result: fetch, check, hash, process. Never raises for bad input."""

    def __init__(self, options: DownloadOptions, fetcher: Fetcher) -> None:
        self._options = options
        self._fetcher = fetcher
        self._processor = ImageProcessor(options)

    async def handle(self, task: FetchTask) -> SampleResult:
        result = SampleResult(task.shard_id, task.index, FAILED_TO_DOWNLOAD)
        if not task.url:
            result.error_message = "missing URL"
            return result
        try:
            body = await self._fetcher.fetch(task.url)
        except FetchError as error:
            result.error_message = str(error)
            return result
        data = body.data
        result.bytes_downloaded = len(data)
        if not data:
            result.error_message = "empty body"
            return result
        if not looks_like_image(data) and not body.content_type.lower().startswith("image/"):
            kind = body.content_type.split(";", 1)[0].strip() or "no content type"
            result.error_message = f"not an image ({kind})"
            return result
        options = self._options
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


async def _serve(options: DownloadOptions, tasks: Any, results: Any, parent_pid: int) -> None:
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    outbox: list[SampleResult] = []
    watchdog = asyncio.create_task(_exit_if_orphaned(parent_pid))
    flusher = asyncio.create_task(_flush_periodically(outbox, results))
    # One thread blocks on the task queue so the loop never does.
    reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-reader")
    slots = asyncio.Semaphore(options.thread_count)
    running: set[asyncio.Task[None]] = set()
    try:
        async with Fetcher(options) as fetcher:
            handler = SampleHandler(options, fetcher)

            async def run_one(task: FetchTask) -> None:
                try:
                    result = await handler.handle(task)
                except Exception as error:  # a bug must not lose the row
                    result = SampleResult(
                        task.shard_id,
                        task.index,
                        FAILED_TO_DOWNLOAD,
                        error_message=f"internal error: {type(error).__name__}: {error}",
                    )
                result.worker_pid = pid
                result.worker_peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                outbox.append(result)
                if len(outbox) >= RESULT_BATCH:
                    _flush(outbox, results)

            while True:
                chunk = await loop.run_in_executor(reader, tasks.get)
                if chunk is None:
                    break
                for task in chunk:
                    await slots.acquire()
                    job = asyncio.create_task(run_one(task))
                    running.add(job)
                    job.add_done_callback(running.discard)
                    job.add_done_callback(lambda _: slots.release())
            if running:
                await asyncio.gather(*running)
    finally:
        flusher.cancel()
        watchdog.cancel()
        _flush(outbox, results)
        reader.shutdown(wait=False, cancel_futures=True)


def _flush(outbox: list[SampleResult], results: Any) -> None:
    if outbox:
        results.put(list(outbox))
        outbox.clear()


async def _flush_periodically(outbox: list[SampleResult], results: Any) -> None:
    while True:
        await asyncio.sleep(RESULT_FLUSH_S)
        _flush(outbox, results)


async def _exit_if_orphaned(parent_pid: int) -> None:
    """Exit if the parent died (even by SIGKILL): a worker must never outlive its shard runner."""
    while True:
        await asyncio.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(3)


def drain(q: Any, deadline_s: float = 1.0) -> None:
    """Empty a queue without blocking for long (used when tearing a pool down)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            q.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
