"""A worker that dies (a codec crash, the OOM killer) costs the rows it held, not the run.

Crashes here are real: the test sends SIGKILL to a live worker process, the way the kernel
ends one that segfaults in a codec or runs out of memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.politeness import worker_for
from dataset_assets.engine.runner import DownloadPool, InputShard, WorkerCrashed
from dataset_assets.engine.shards.layout import compute_key
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

KILLER_DEADLINE_S = 60.0


def _in_background(work: Callable[[threading.Event], None]) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, signal.SIGKILL)


def _statuses(tmp_path) -> dict[str, tuple[str, str | None]]:
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    return {r["key"]: (r["status"], r["error_message"]) for r in table}


def test_a_killed_worker_costs_its_rows_and_the_shard_still_commits(tmp_path) -> None:
    images = {f"{i}.jpg": make_image(i, 64, 48) for i in range(4)}
    config = ServerConfig(max_lifetime_s=120, extra_hosts=3)
    with ImageServer(images=images, config=config) as server:
        # Two hosts owned by different workers: one slow (killed mid-fetch), one fast.
        by_worker = {worker_for(server.url("0.jpg", host), 2): host for host in server.hosts}
        slow_host, fast_host = by_worker[0], by_worker[1]
        urls = [server.url_for(f"/slow/2/{i % 4}.jpg", slow_host) for i in range(24)]
        urls += [server.url(f"{i % 4}.jpg", fast_host) for i in range(24)]
        options = local_options(processes_count=2, timeout=20, output_format="files")
        with DownloadPool(options, str(tmp_path)) as pool:
            first_pids = list(pool.worker_pids)

            def kill_once_requests_are_in_flight(stop: threading.Event) -> None:
                end = time.monotonic() + KILLER_DEADLINE_S
                while not stop.is_set() and time.monotonic() < end:
                    if any(p.startswith("/slow/") for p in server.stats.paths):
                        _kill(first_pids[0])  # the slow host's worker
                        return
                    time.sleep(0.01)

            killer, stop = _in_background(kill_once_requests_are_in_flight)
            try:
                (stats,) = list(pool.run([InputShard(0, rows(urls))]))
            finally:
                stop.set()
                killer.join(5)
            assert pool.crashes == 1
            assert not set(pool.worker_pids) & set(first_pids)  # fresh workers went on

    by_key = _statuses(tmp_path)
    assert len(by_key) == len(urls)  # nothing lost
    outcome = [by_key[compute_key(i, 0, 10_000, 5)] for i in range(len(urls))]
    crashed = [i for i, (s, m) in enumerate(outcome) if (m or "").startswith("worker crashed")]
    assert crashed, "the rows in flight at the kill are recorded as crashed"
    assert all(outcome[i][0] == "failed_to_resize" for i in crashed)
    assert max(crashed) < 24  # only the killed worker's rows (the slow host's)
    assert all(s == "success" for s, _ in outcome[24:])  # the other worker's rows, sent again
    assert stats.successes + len(crashed) == len(urls)
    assert (tmp_path / "00000_stats.json").exists()


def test_a_row_that_kills_every_worker_decoding_it_is_recorded_and_the_rest_succeed(tmp_path) -> None:
    # A large noisy PNG takes long enough to decode that the killer sees it in a busy slot.
    poison = make_image(99, 2600, 2200, "png")
    images = {"poison.png": poison, **{f"{i}.jpg": make_image(i, 64, 48) for i in range(8)}}
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=120)) as server:
        urls = [server.url(f"{i % 8}.jpg") for i in range(30)]
        urls.insert(7, server.url("poison.png"))
        poison_key = (0, 7)
        options = local_options(processes_count=2, timeout=20, output_format="files")
        with DownloadPool(options, str(tmp_path)) as pool:

            def kill_whoever_decodes_the_poison(stop: threading.Event) -> None:
                end = time.monotonic() + KILLER_DEADLINE_S
                while not stop.is_set() and time.monotonic() < end:
                    pids = pool.worker_pids
                    for slot, row in enumerate(pool.busy_rows()):
                        if row == poison_key and slot < len(pids):
                            _kill(pids[slot])
                    time.sleep(0.001)

            killer, stop = _in_background(kill_whoever_decodes_the_poison)
            try:
                (stats,) = list(pool.run([InputShard(0, rows(urls))]))
            finally:
                stop.set()
                killer.join(5)
            crashes = pool.crashes

    by_key = _statuses(tmp_path)
    assert len(by_key) == len(urls)
    status, message = by_key[compute_key(7, 0, 10_000, 5)]
    assert status == "failed_to_resize" and message.startswith("worker crashed")
    assert crashes == 1  # the row that took a worker down is not handed to another
    others = [v for k, v in by_key.items() if k != compute_key(7, 0, 10_000, 5)]
    assert all(s == "success" or (m or "").startswith("worker crashed") for s, m in others)
    assert stats.count == len(urls)


def test_workers_that_die_before_any_row_comes_back_end_the_run_with_an_error(tmp_path) -> None:
    images = {"a.jpg": make_image(1, 64, 48)}
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=120)) as server:
        # More rows than one worker takes in at once, so that rows are still waiting each time.
        urls = [server.url_for(f"/slow/3/a.jpg?{i}") for i in range(20_000)]
        options = local_options(processes_count=1, timeout=20, output_format="files")
        with DownloadPool(options, str(tmp_path)) as pool:

            def kill_every_worker(stop: threading.Event) -> None:
                end = time.monotonic() + KILLER_DEADLINE_S
                while not stop.is_set() and time.monotonic() < end:
                    for pid in pool.worker_pids:
                        _kill(pid)
                    time.sleep(0.05)

            killer, stop = _in_background(kill_every_worker)
            try:
                with pytest.raises(WorkerCrashed, match="before any row came back"):
                    list(pool.run([InputShard(0, rows(urls))]))
            finally:
                stop.set()
                killer.join(5)
        assert pool.crashes == 2  # the third death in a row ends the run
    assert not (tmp_path / "00000_stats.json").exists()  # nothing committed
