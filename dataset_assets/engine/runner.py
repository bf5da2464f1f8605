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
import multiprocessing.connection
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import pyarrow as pa

from dataset_assets.engine.consent.blocklist import SIGNAL as BLOCKLIST_SIGNAL
from dataset_assets.engine.consent.blocklist import Blocklist, load_blocklist
from dataset_assets.engine.options import FETCH_URL_COLUMN, DownloadOptions
from dataset_assets.engine.politeness import worker_for
from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.records import FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE, FetchTask, SampleResult
from dataset_assets.engine.resume import previous_successes
from dataset_assets.engine.shards.gates import ShardGates
from dataset_assets.engine.shards.layout import parquet_name, shard_name, stats_name
from dataset_assets.engine.shards.lease import LEASE_RENEW_S, ShardLease
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.engine.shards.sample_counts import publish_sample_counts
from dataset_assets.engine.shards.writer import ShardWriter
from dataset_assets.engine.stats import ShardStats
from dataset_assets.engine.worker import BusySlot, worker_main
from dataset_assets.io.storage import OutputFolder

TASK_CHUNK = 16
WORKER_QUEUE_CHUNKS = 8
BODIES_PER_WORKER = 2
MAX_ROUTED_ROWS = 50_000  # rows the router keeps aside for busy workers (~10 MB)
ROUTER_POLL_S = 0.01
RESULT_POLL_S = 0.5
JOIN_TIMEOUT_S = 5.0
WORKER_CHECK_S = 0.2  # how often the parent looks for dead workers while results flow
MAX_FUTILE_RESTARTS = 3  # workers that die again before any row comes back: a broken setup
# Whitespace around a URL is not part of it (the stored ``url`` keeps the input's text).
_URL_WHITESPACE = " \t\n\r\x0b\x0c"


# What shard_completion finds; only COMPLETE is left as it is by an incremental run.
COMPLETE = "complete"
MISSING = "missing"  # no stats json: never committed (or being replaced)
REPLANNED = "replanned"  # committed from other input rows than the plan's now
UNREADABLE = "unreadable"  # a stats json that is not one (truncated, garbage)
FAILED_GATES = "failed_gates"  # committed, but a per-shard gate failed (e.g. its host was down)

# The log line for each state that makes an incremental run download a committed shard again.
WHY_AGAIN = {
    REPLANNED: "was built from another input (re-planned); downloading it again",
    UNREADABLE: "has an unreadable stats file; downloading it again",
    FAILED_GATES: "failed its gates when it was written (see its checks); downloading it again",
}


def shard_completion(
    output: OutputFolder, shard_id: int, options: DownloadOptions, fingerprint: str | None = None
) -> str:
    """COMPLETE, MISSING, REPLANNED, UNREADABLE or FAILED_GATES: what the skip rule decides on.

    A shard is complete when its stats json exists (img2dataset's rule) and does not record a
    failed gate: a shard committed at 0 % success because its host was down keeps its files but
    is downloaded again by every resume path (incremental runs, "failed and missing"
    backfills). With ``fingerprint`` (the plan's), the stats must also record it as the input
    the shard was built from. Stats of an older version, which record neither, are taken as
    they are (re-downloading every old shard would be worse than trusting them).
    """
    name = stats_name(shard_name(shard_id, options.oom_shard_count))
    try:
        stats = output.read_json(name)
    except FileNotFoundError:
        return MISSING
    except (OSError, ValueError):
        return UNREADABLE
    if not isinstance(stats, dict):
        return UNREADABLE
    if stats.get("passed_gates") is False:
        return FAILED_GATES
    recorded = stats.get("input_fingerprint")
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        return REPLANNED
    return COMPLETE


def is_shard_complete(
    output: OutputFolder, shard_id: int, options: DownloadOptions, fingerprint: str | None = None
) -> bool:
    return shard_completion(output, shard_id, options, fingerprint) == COMPLETE


def already_done(
    output: OutputFolder, shard_id: int, options: DownloadOptions, fingerprint: str | None = None
) -> bool:
    """Whether a shard is left as it is: the one rule of skip / overwrite / retry_failed.

    ``incremental`` skips complete shards; ``overwrite`` redoes them; ``retry_failed`` opens
    them again (the pool keeps their successes and fetches only their failed rows). Callers that
    want to avoid even reading a skipped shard's input (the reader, the assets) ask here too.
    A shard built from other rows than ``fingerprint`` (the plan's) is not complete, in any mode.
    """
    return options.incremental_mode == "incremental" and is_shard_complete(
        output, shard_id, options, fingerprint
    )


def remove_shard(output: OutputFolder, shard_id: int, options: DownloadOptions) -> list[str]:
    """Delete a committed shard's files (stats first: it stops looking complete at once).

    For shards a re-plan left outside the plan: their rows are no longer wanted (a denied
    domain, a removal), and a consumer globbing ``*.tar`` must not read them. Returns the names
    deleted.
    """
    shard = shard_name(shard_id, options.oom_shard_count)
    container = shard_format(options.output_format).container(shard)
    removed = []
    for name in (stats_name(shard), parquet_name(shard), container):
        if name is not None and output.exists(name):
            output.fs.rm(output.path(name), recursive=True)
            removed.append(name)
    return removed


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
    """Workers keep dying before any row comes back (a broken install, not a bad image)."""


Key = tuple[int, int]  # (shard_id, row index)


class DownloadPool:
    """A set of worker processes shared by the shards given to :meth:`run`.

    Why the pool survives a worker's death: one hostile image that crashes a codec (or the OOM
    killer) must cost the rows that worker held, not the run. The rows it held are recorded
    ``failed_to_resize`` with "worker crashed", and a fresh set of workers goes on with the rest.

    The ``url_blocklist`` is loaded here, once, in the parent (never shipped to the workers):
    rows it names are recorded as refused and never routed to a worker.

    Each shard is written under its lease (one writer per shard at a time, see
    :mod:`~dataset_assets.engine.shards.lease`) and judged by ``gates`` as it is committed.
    """

    def __init__(
        self,
        options: DownloadOptions,
        output_folder: str | OutputFolder,
        blocklist: Blocklist | None = None,
        gates: ShardGates | None = None,
    ) -> None:
        self.options = options
        self.gates = gates or ShardGates()
        self.output = (
            output_folder if isinstance(output_folder, OutputFolder) else OutputFolder(output_folder)
        )
        if blocklist is None and options.url_blocklist:
            blocklist = load_blocklist(options.url_blocklist, self.output.storage_options)
        self.blocklist = blocklist
        self._ctx = multiprocessing.get_context("spawn")
        self._tasks: list[Any] = []
        self._bodies: Any = None
        self._results: list[Any] = []  # one pipe per worker (see _start)
        self._broken: set[int] = set()  # workers whose pipe broke mid-message
        self._busy: Any = None
        self._processes: list[Any] = []
        self.crashes = 0  # worker deaths survived so far

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def busy_rows(self) -> list[Key | None]:
        """The row each worker's image thread is processing now (None when idle)."""
        return [BusySlot(self._busy, i).held() for i in range(len(self._processes))]

    def __enter__(self) -> DownloadPool:
        self._start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(graceful=exc_type is None)

    def _start(self) -> None:
        """Fresh queues and workers (also after a crash: a dead worker may hold a queue's lock)."""
        count = self.options.processes_count
        # One task queue per worker: each host's rows all go to one worker (its budget for the
        # run). Bounded: the router stays a few chunks ahead of each worker. Replaced in place,
        # so the router sees the new queues.
        self._tasks[:] = [self._ctx.Queue(maxsize=WORKER_QUEUE_CHUNKS) for _ in range(count)]
        # Downloaded bodies, taken by whichever worker's image thread is free: CPU spreads over
        # every core even when one host (one worker) does all the fetching.
        self._bodies = self._ctx.Queue(maxsize=count * BODIES_PER_WORKER)
        # Results come back on one pipe per worker, whose only writer is that worker: a worker
        # killed mid-message then ends its own pipe (the reader sees end-of-file) instead of
        # leaving half a message in a pipe shared by all, which hangs the reader for good.
        self._results = []
        self._broken = set()
        self._busy = self._ctx.Array("q", [BusySlot.IDLE] * (2 * count), lock=False)
        with _bare_main_module():
            for slot, tasks in enumerate(self._tasks):
                reader, writer = self._ctx.Pipe(duplex=False)
                process = self._ctx.Process(
                    target=worker_main,
                    args=(self.options, tasks, self._bodies, writer, os.getpid(), BusySlot(self._busy, slot)),
                    daemon=True,
                )
                process.start()
                writer.close()  # the worker holds the only write end now
                self._processes.append(process)
                self._results.append(reader)

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
        self._stop_processes()
        self._close_queues()

    def _stop_processes(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(JOIN_TIMEOUT_S)
        self._processes.clear()

    def _close_queues(self) -> None:
        for q in (*self._tasks, self._bodies):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        for reader in self._results:
            reader.close()
        self._results = []

    def _dead_workers(self) -> list[int]:
        return [slot for slot, p in enumerate(self._processes) if slot in self._broken or not p.is_alive()]

    def _receive(self, timeout: float) -> list[SampleResult]:
        """Results from every worker whose pipe has some, waiting up to ``timeout`` for one."""
        readers = [r for slot, r in enumerate(self._results) if slot not in self._broken]
        batch: list[SampleResult] = []
        for reader in multiprocessing.connection.wait(readers, timeout):
            try:
                batch += reader.recv()
            except Exception:  # end of file or a torn message: its worker is gone
                self._broken.add(self._results.index(reader))
        return batch

    def _restart_after_crash(self, dead: list[int]) -> tuple[dict[int, str], set[Key]]:
        """Replace every worker; returns (dead slot: why) and the rows the dead ones were decoding.

        Why all of them: a worker killed while it read a shared queue leaves that queue's lock
        taken for good, so the queues are replaced, and with them the workers reading them.
        Rows the live workers held are sent again (the router knows them).
        """
        why = {
            slot: f"worker crashed (pid {self._processes[slot].pid}, exit {self._processes[slot].exitcode})"
            for slot in dead
        }
        decoding = {row for row in (self.busy_rows()[slot] for slot in dead) if row is not None}
        self._stop_processes()
        self._close_queues()
        self.crashes += 1
        self._start()
        return why, decoding

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
        checked_at = renewed_at = time.monotonic()
        refused_rows = [0]  # recorded by the feeder (url_blocklist), for on_progress
        rows_since_start = 0
        futile_restarts = 0

        def recover(dead: list[int]) -> int:
            """Record the dead workers' rows as crashed, restart, re-send the rest; rows recorded."""
            nonlocal rows_since_start, futile_restarts
            futile_restarts = 0 if rows_since_start else futile_restarts + 1
            if futile_restarts >= MAX_FUTILE_RESTARTS:
                raise WorkerCrashed(
                    f"workers died {futile_restarts} times in a row before any row came back "
                    f"(last: {', '.join(self._processes[slot].name for slot in dead)})"
                )
            rows_since_start = 0
            with router.lock:
                why, decoding = self._restart_after_crash(dead)
                crashed = router.reclaim(why, decoding)
            with lock:
                for (shard_id, index), message in crashed.items():
                    writers[shard_id].add(
                        SampleResult(shard_id, index, FAILED_TO_RESIZE, error_message=message)
                    )
            return len(crashed)

        def feed() -> None:
            try:
                for shard in shards:
                    if stop.is_set():
                        return
                    mode = self.options.incremental_mode
                    kept: dict[int, SampleResult] = {}
                    if mode != "overwrite" and is_shard_complete(
                        self.output, shard.shard_id, self.options, shard.fingerprint
                    ):
                        if mode == "retry_failed":
                            kept = previous_successes(self.output, shard.shard_id, self.options)
                        if mode == "incremental" or len(kept) == shard.table.num_rows:
                            finished.put(read_shard_stats(self.output, shard.shard_id, self.options))
                            continue
                    lease = ShardLease.acquire(
                        self.output, shard_name(shard.shard_id, self.options.oom_shard_count)
                    )
                    writer = ShardWriter(
                        self.output,
                        self.options,
                        shard.shard_id,
                        shard.table,
                        self.gates,
                        lease,
                        shard.fingerprint,
                    )
                    for result in kept.values():
                        writer.add(result)
                    writer.stats.kept_from_previous_run = len(kept)
                    refused = _refused(shard, self.blocklist, skip=kept.keys()) if self.blocklist else {}
                    for index, message in refused.items():
                        writer.add(
                            SampleResult(
                                shard.shard_id,
                                index,
                                FAILED_TO_DOWNLOAD,
                                error_message=message,
                                opt_out=BLOCKLIST_SIGNAL,
                            )
                        )
                    with lock:
                        writers[shard.shard_id] = writer
                        refused_rows[0] += len(refused)
                    router.route(_tasks(shard, self.options, skip=kept.keys() | refused.keys()))
                router.finish()
            except BaseException as error:
                feeder_error.append(error)
            finally:
                feeding_done.set()

        complete: list[ShardWriter] = []
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
                    # The others are added to only by this thread (and under this lock).
                    if time.monotonic() - renewed_at >= LEASE_RENEW_S:
                        renewed_at = time.monotonic()
                        for writer in writers.values():
                            if writer.lease is not None:
                                writer.lease.renew()
                while complete:
                    stats = complete[0].close()  # aborts its own shard if it raises
                    complete.pop(0)
                    yield stats
                if feeder_error:
                    raise feeder_error[0]
                if idle and all_fed and finished.empty():
                    return
                router.send_ready()  # rows sent again after a crash, once the feeder is gone
                batch = self._receive(RESULT_POLL_S)
                # Only rows still out count: after a crash, a row's old result may be gone
                # (sent again) or already recorded (crashed).
                batch = [r for r in batch if router.returned((r.shard_id, r.index))]
                with lock:
                    for result in batch:
                        writers[result.shard_id].add(result)
                    recorded = len(batch) + refused_rows[0]
                    refused_rows[0] = 0
                rows_since_start += len(batch)
                if not batch or time.monotonic() - checked_at >= WORKER_CHECK_S:
                    checked_at = time.monotonic()
                    dead = self._dead_workers()
                    if dead:
                        recorded += recover(dead)
                if on_progress is not None and recorded:
                    on_progress(recorded)
        except BaseException:
            stop.set()
            with lock:
                for writer in [*complete, *writers.values()]:  # abort() is idempotent
                    writer.abort()
                writers.clear()
            raise
        finally:
            stop.set()
            feeder.join(JOIN_TIMEOUT_S)


def _refused(shard: InputShard, blocklist: Blocklist, skip: Collection[int] = ()) -> dict[int, str]:
    """Rows of ``shard`` the url_blocklist names: row index -> the message it records."""
    table = shard.table
    given = table.column("url").to_pylist()
    normal = (
        table.column(FETCH_URL_COLUMN).to_pylist()
        if FETCH_URL_COLUMN in table.column_names
        else [None] * len(given)
    )
    refused = {}
    for i, (url, fetch_url) in enumerate(zip(given, normal, strict=True)):
        if i not in skip:
            message = blocklist.refusal(url, fetch_url)
            if message is not None:
                refused[i] = message
    return refused


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

    It also remembers which worker holds each row sent and not yet back, which is what a
    worker's death costs: those rows are recorded as crashed, and rows of the workers stopped
    with it are sent again (each at most once, so a row that kills every worker that touches it
    ends as crashed instead of taking the run down one worker at a time).
    """

    def __init__(self, queues: list[Any], stop: threading.Event) -> None:
        self._queues = queues
        self._stop = stop
        self._filling: list[list[FetchTask]] = [[] for _ in queues]
        self._ready: list[collections.deque[list[FetchTask]]] = [collections.deque() for _ in queues]
        self._buffered = 0
        self._out: dict[Key, tuple[int, FetchTask]] = {}  # sent, not back: (worker, task)
        self._sent_again: set[Key] = set()
        self.lock = threading.Lock()  # held while sending and while the pool restarts

    def route(self, tasks: Iterable[FetchTask]) -> None:
        """Route one shard's rows; its last partial chunks leave at once (the shard can finish)."""
        workers = len(self._queues)
        for task in tasks:
            worker = worker_for(task.url or "", workers)
            filling = self._filling[worker]
            filling.append(task)
            if len(filling) >= TASK_CHUNK:
                self._enqueue(worker, filling)
                self._filling[worker] = []
                self._send_ready(until_under=MAX_ROUTED_ROWS)
        for worker, filling in enumerate(self._filling):
            if filling:
                self._enqueue(worker, filling)
                self._filling[worker] = []
        self._send_ready(until_under=MAX_ROUTED_ROWS)

    def finish(self) -> None:
        """Block until every routed row is in its worker's queue (or the run stops)."""
        self._send_ready(until_under=1)

    def send_ready(self) -> None:
        """Hand over what the queues take now, without waiting."""
        self._send_ready(until_under=sys.maxsize)

    def returned(self, key: Key) -> bool:
        """A row came back; False if it was not out (recorded as crashed, or sent again)."""
        return self._out.pop(key, None) is not None

    def reclaim(self, crashed_workers: dict[int, str], decoding: set[Key]) -> dict[Key, str]:
        """After a restart (caller holds :attr:`lock`): rows to record as crashed, with messages.

        The rest of what was out goes back to the front of its worker's line.
        """
        crashed: dict[Key, str] = {}
        again: dict[int, list[FetchTask]] = collections.defaultdict(list)
        any_reason = next(iter(crashed_workers.values()))
        for key, (worker, task) in self._out.items():
            if worker in crashed_workers or key in decoding:
                crashed[key] = crashed_workers.get(worker, any_reason)
            elif key in self._sent_again:
                crashed[key] = f"{any_reason}; this row was out at an earlier crash too"
            else:
                self._sent_again.add(key)
                again[worker].append(task)
        self._out.clear()
        for worker, tasks in again.items():
            chunks = [tasks[i : i + TASK_CHUNK] for i in range(0, len(tasks), TASK_CHUNK)]
            self._ready[worker].extendleft(reversed(chunks))
            self._buffered += len(tasks)
        return crashed

    def _enqueue(self, worker: int, chunk: list[FetchTask]) -> None:
        with self.lock:
            self._ready[worker].append(chunk)
            self._buffered += len(chunk)

    def _send_ready(self, until_under: int) -> None:
        """Hand over what the queues take now, waiting while ``until_under`` rows or more are
        still buffered (polling: the queues give no signal when a worker takes a chunk)."""
        while True:
            with self.lock:
                for worker, ready in enumerate(self._ready):
                    # Only this thread puts: a queue that is not full now takes the next put.
                    # (Trying and failing cost a registration and its undoing per row, 100
                    # times a second while a worker was behind.)
                    while ready and not self._queues[worker].full():
                        chunk = ready[0]
                        for task in chunk:  # before the put: its result may come back at once
                            self._out[(task.shard_id, task.index)] = (worker, task)
                        try:
                            self._queues[worker].put_nowait(chunk)
                        except queue.Full:
                            for task in chunk:
                                del self._out[(task.shard_id, task.index)]
                            break
                        self._buffered -= len(ready.popleft())
                buffered = self._buffered
            if buffered < until_under or self._stop.is_set():
                return
            time.sleep(ROUTER_POLL_S)


def download_shards(
    shards: Iterable[InputShard],
    output_folder: str | OutputFolder,
    options: DownloadOptions,
    gates: ShardGates | None = None,
) -> Iterator[ShardStats]:
    """Download several shards through one pool of their own, yielding stats as each commits.

    The API a multi-shard Dagster run calls: the pool starts once, and each shard's slowest
    requests overlap the next shard's first ones. ``shards`` is consumed lazily (a generator
    may read each shard's input only when the pool gets to it). Once every shard is committed,
    the trainers' sample counts (``__len__``, ``sizes.json``) are brought up to date.
    """
    with DownloadPool(options, output_folder, gates=gates) as pool:
        yield from pool.run(shards)
        output = pool.output
    publish_sample_counts(output, options)


def download_shard(
    rows: pa.Table, output_folder: str | OutputFolder, options: DownloadOptions, shard_id: int = 0
) -> ShardStats:
    """Download one shard with a pool of its own."""
    (stats,) = list(download_shards([InputShard(shard_id, rows)], output_folder, options))
    return stats
