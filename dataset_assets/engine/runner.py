"""Runs shards on a pool of worker processes and writes them as results stream back.

Why a pool that outlives one shard: spawning workers costs about a second each, and with
several shards in flight the tail of one shard (its slowest requests) overlaps the start of
the next, so the cores never idle waiting for stragglers. Each shard is still committed on its
own, atomically, as soon as its last row is back.

The parent process only routes results and writes files; workers do all fetching and image
work. Any exit from the pool (normal, exception, KeyboardInterrupt, a Dagster run
termination) terminates the workers: none outlives the pool.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import pyarrow as pa

from dataset_assets.engine.options import FETCH_URL_COLUMN, DownloadOptions
from dataset_assets.engine.politeness import worker_for
from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.records import FetchTask, SampleResult
from dataset_assets.engine.resume import previous_successes
from dataset_assets.engine.shards.layout import shard_name, stats_name
from dataset_assets.engine.shards.writer import ShardWriter
from dataset_assets.engine.stats import ShardStats
from dataset_assets.engine.worker import drain, worker_main
from dataset_assets.io.storage import OutputFolder

TASK_CHUNK = 16
WORKER_QUEUE_CHUNKS = 8
BODIES_PER_WORKER = 2
MAX_ROUTED_ROWS = 50_000  # rows the router keeps aside for busy workers (~10 MB)
ROUTER_POLL_S = 0.01
RESULT_POLL_S = 0.5
JOIN_TIMEOUT_S = 5.0
# Whitespace around a URL is not part of it (the stored ``url`` keeps the input's text).
_URL_WHITESPACE = " \t\n\r\x0b\x0c"


def is_shard_complete(output: OutputFolder, shard_id: int, options: DownloadOptions) -> bool:
    return output.exists(stats_name(shard_name(shard_id, options.oom_shard_count)))


def already_done(output: OutputFolder, shard_id: int, options: DownloadOptions) -> bool:
    """Whether a shard is left as it is: the one rule of skip / overwrite / retry_failed.

    ``incremental`` skips complete shards; ``overwrite`` redoes them; ``retry_failed`` opens
    them again (the pool keeps their successes and fetches only their failed rows). Callers that
    want to avoid even reading a skipped shard's input (the reader, the assets) ask here too.
    """
    return options.incremental_mode == "incremental" and is_shard_complete(output, shard_id, options)


def read_shard_stats(output: OutputFolder, shard_id: int, options: DownloadOptions) -> ShardStats:
    stats = ShardStats.from_json(
        output.read_json(stats_name(shard_name(shard_id, options.oom_shard_count))), shard_id
    )
    stats.skipped = True
    return stats


@contextlib.contextmanager
def _bare_main_module() -> Iterator[None]:
    """Keep spawned workers from re-importing the parent's ``__main__``.

    spawn re-runs the parent's main module in every child; under ``dagster asset materialize``
    that is the whole Dagster CLI (about a second of CPU per worker, per shard run). Workers
    need only :func:`worker_main`, importable by name, so they are shown a bare main module.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class WorkerCrashed(RuntimeError):
    """A worker process died (killed, out of memory, codec crash); its shards are not committed."""


class DownloadPool:
    """A set of worker processes shared by the shards given to :meth:`run`."""

    def __init__(self, options: DownloadOptions, output_folder: str | OutputFolder) -> None:
        self.options = options
        self.output = (
            output_folder if isinstance(output_folder, OutputFolder) else OutputFolder(output_folder)
        )
        self._ctx = multiprocessing.get_context("spawn")
        # One task queue per worker: each host's rows all go to one worker (its budget for the
        # run). Bounded: the router stays a few chunks ahead of each worker.
        self._tasks: list[Any] = [
            self._ctx.Queue(maxsize=WORKER_QUEUE_CHUNKS) for _ in range(options.processes_count)
        ]
        # Downloaded bodies, taken by whichever worker's image thread is free: CPU spreads over
        # every core even when one host (one worker) does all the fetching.
        self._bodies: Any = self._ctx.Queue(maxsize=options.processes_count * BODIES_PER_WORKER)
        self._results: Any = self._ctx.Queue()
        self._processes: list[Any] = []

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def __enter__(self) -> DownloadPool:
        with _bare_main_module():
            for tasks in self._tasks:
                process = self._ctx.Process(
                    target=worker_main,
                    args=(self.options, tasks, self._bodies, self._results, os.getpid()),
                    daemon=True,
                )
                process.start()
                self._processes.append(process)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(graceful=exc_type is None)

    def close(self, graceful: bool = True) -> None:
        """Stop the workers: politely after a clean run, at once after any exception."""
        if graceful:
            for tasks in self._tasks[: len(self._processes)]:
                try:
                    tasks.put(None, timeout=JOIN_TIMEOUT_S)
                except queue.Full:
                    continue
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            for process in self._processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(JOIN_TIMEOUT_S)
        self._processes.clear()
        drain(self._results, 0.2)
        for q in (*self._tasks, self._bodies, self._results):
            q.cancel_join_thread()
            q.close()

    def run(
        self,
        shards: Iterable[InputShard],
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[ShardStats]:
        """Download shards, yielding each one's stats as it is committed (completion order).

        Shards already complete in the output folder are yielded at once, marked skipped,
        unless ``incremental_mode`` is ``overwrite`` (redo them) or ``retry_failed`` (redo only
        their failed rows).
        """
        writers: dict[int, ShardWriter] = {}
        lock = threading.Lock()
        finished: queue.SimpleQueue[ShardStats] = queue.SimpleQueue()
        feeder_error: list[BaseException] = []
        feeding_done = threading.Event()
        stop = threading.Event()

        router = _HostRouter(self._tasks, stop)

        def feed() -> None:
            try:
                for shard in shards:
                    if stop.is_set():
                        return
                    mode = self.options.incremental_mode
                    kept: dict[int, SampleResult] = {}
                    if mode != "overwrite" and is_shard_complete(self.output, shard.shard_id, self.options):
                        if mode == "retry_failed":
                            kept = previous_successes(self.output, shard.shard_id, self.options)
                        if mode == "incremental" or len(kept) == shard.table.num_rows:
                            finished.put(read_shard_stats(self.output, shard.shard_id, self.options))
                            continue
                    writer = ShardWriter(self.output, self.options, shard.shard_id, shard.table)
                    for result in kept.values():
                        writer.add(result)
                    writer.stats.kept_from_previous_run = len(kept)
                    with lock:
                        writers[shard.shard_id] = writer
                    router.route(_tasks(shard, self.options, skip=kept.keys()))
                router.finish()
            except BaseException as error:
                feeder_error.append(error)
            finally:
                feeding_done.set()

        feeder = threading.Thread(target=feed, name="shard-feeder", daemon=True)
        feeder.start()
        try:
            while True:
                # Read before looking at the writers: once set, no writer can appear later.
                all_fed = feeding_done.is_set()
                while not finished.empty():
                    yield finished.get()
                with lock:
                    complete = [writers.pop(s) for s in [s for s, w in writers.items() if w.done]]
                    idle = not writers
                for writer in complete:
                    yield writer.close()
                if feeder_error:
                    raise feeder_error[0]
                if idle and all_fed and finished.empty():
                    return
                try:
                    batch = self._results.get(timeout=RESULT_POLL_S)
                except queue.Empty:
                    self._check_workers()
                    continue
                with lock:
                    for result in batch:
                        writers[result.shard_id].add(result)
                if on_progress is not None:
                    on_progress(len(batch))
        except BaseException:
            stop.set()
            with lock:
                for writer in writers.values():
                    writer.abort()
                writers.clear()
            raise
        finally:
            stop.set()
            feeder.join(JOIN_TIMEOUT_S)

    def _check_workers(self) -> None:
        dead = [p for p in self._processes if not p.is_alive()]
        if dead:
            codes = ", ".join(f"pid {p.pid} exit {p.exitcode}" for p in dead)
            raise WorkerCrashed(f"worker process died ({codes}); unfinished shards were not committed")


def _tasks(shard: InputShard, options: DownloadOptions, skip: Collection[int] = ()) -> Iterator[FetchTask]:
    table = shard.table
    fetched = FETCH_URL_COLUMN if FETCH_URL_COLUMN in table.column_names else "url"
    urls = [u.strip(_URL_WHITESPACE) if u else u for u in table.column(fetched).to_pylist()]
    bboxes = table.column(options.bbox_col).to_pylist() if options.bbox_col else None
    hashes = table.column(options.verify_hash[0]).to_pylist() if options.verify_hash else None
    for i, url in enumerate(urls):
        if i not in skip:
            yield FetchTask(
                shard.shard_id,
                i,
                url,
                bboxes[i] if bboxes is not None else None,
                hashes[i] if hashes is not None else None,
            )


class _HostRouter:
    """Sends each row to the worker that owns its host, in chunks, without head-of-line blocking.

    Why buffer here: a worker busy with one huge, slow host fills its queue; rows of other hosts
    (other workers) must still flow, so the router keeps up to ``MAX_ROUTED_ROWS`` rows of the
    busy worker aside and goes on reading. Memory is bounded by that, not by the shard.
    """

    def __init__(self, queues: list[Any], stop: threading.Event) -> None:
        self._queues = queues
        self._stop = stop
        self._filling: list[list[FetchTask]] = [[] for _ in queues]
        self._ready: list[collections.deque[list[FetchTask]]] = [collections.deque() for _ in queues]
        self._buffered = 0

    def route(self, tasks: Iterable[FetchTask]) -> None:
        """Route one shard's rows; its last partial chunks leave at once (the shard can finish)."""
        workers = len(self._queues)
        for task in tasks:
            worker = worker_for(task.url or "", workers)
            filling = self._filling[worker]
            filling.append(task)
            self._buffered += 1
            if len(filling) >= TASK_CHUNK:
                self._ready[worker].append(filling)
                self._filling[worker] = []
                self._send_ready(until_under=MAX_ROUTED_ROWS)
        for worker, filling in enumerate(self._filling):
            if filling:
                self._ready[worker].append(filling)
                self._filling[worker] = []
        self._send_ready(until_under=MAX_ROUTED_ROWS)

    def finish(self) -> None:
        """Block until every routed row is in its worker's queue (or the run stops)."""
        self._send_ready(until_under=1)

    def _send_ready(self, until_under: int) -> None:
        """Hand over what the queues take now, waiting while ``until_under`` rows or more are
        still buffered (polling: the queues give no signal when a worker takes a chunk)."""
        while True:
            for worker, ready in enumerate(self._ready):
                while ready:
                    try:
                        self._queues[worker].put_nowait(ready[0])
                    except queue.Full:
                        break
                    self._buffered -= len(ready.popleft())
            if self._buffered < until_under or self._stop.is_set():
                return
            time.sleep(ROUTER_POLL_S)


def download_shards(
    shards: Iterable[InputShard], output_folder: str | OutputFolder, options: DownloadOptions
) -> Iterator[ShardStats]:
    """Download several shards through one pool of their own, yielding stats as each commits.

    The API a multi-shard Dagster run calls: the pool starts once, and each shard's slowest
    requests overlap the next shard's first ones. ``shards`` is consumed lazily (a generator
    may read each shard's input only when the pool gets to it).
    """
    with DownloadPool(options, output_folder) as pool:
        yield from pool.run(shards)


def download_shard(
    rows: pa.Table, output_folder: str | OutputFolder, options: DownloadOptions, shard_id: int = 0
) -> ShardStats:
    """Download one shard with a pool of its own."""
    (stats,) = list(download_shards([InputShard(shard_id, rows)], output_folder, options))
    return stats
