"""Host-aware scheduling on the real web's shapes: one host, heavy images, throttling, several workers.

Every test runs real loopback servers and measures politeness from the server's side.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.fetch import Fetcher, RequestWindow
from dataset_assets.engine.politeness import HostPoliteness, HostRefused, worker_for
from dataset_assets.engine.records import FetchTask
from dataset_assets.engine.runner import download_shard
from dataset_assets.engine.worker import ImageHandoff, ImageJob
from dataset_assets_tests.conftest import NO_POLICY_FILES, local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig


def _messages(folder) -> list[str]:
    table = pq.read_table(folder / "00000.parquet")
    return [m or "ok" for m in table.column("error_message").to_pylist()]


def _big_png(seed: int) -> bytes:
    """A 2400x1800 PNG that does not compress away (~100 ms to decode and resize here)."""
    rng = np.random.default_rng(seed)
    h, w = 1800, 2400
    base = (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)
    image = np.dstack([base, base[::-1], base[:, ::-1]]) ^ rng.integers(0, 8, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[ImageServer]:
    images = {"a.jpg": make_image(1, 64, 48), "b.jpg": make_image(2, 48, 64)}
    config = ServerConfig(latency_s=(0.05, 0.1), extra_hosts=2, max_lifetime_s=300, seed=1)
    with ImageServer(images=images, config=config) as server:
        yield server


def test_one_host_whose_queue_outlasts_the_deadline_stores_every_row(tmp_path) -> None:
    # 2 connections, 0.3 s per answer: the last of 24 rows waits ~3.6 s for its turn, far past
    # the 1 s deadline. Waiting for our own politeness is not a timeout and not a host failure.
    config = ServerConfig(latency_s=(0.3, 0.3), max_lifetime_s=120)
    with ImageServer(images={"a.jpg": make_image(1, 64, 48)}, config=config) as server:
        urls = [server.url_for(f"/img/a.jpg?n={i}") for i in range(24)]
        options = local_options(
            timeout=1, max_connections_per_host=2, host_failure_limit=2, output_format="parquet"
        )
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        assert stats.successes == 24, _messages(tmp_path)
        assert server.stats.host().peak_in_flight <= 2


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_the_connection_cap_is_per_run_not_per_process(
    processes: int, three_hosts: ImageServer, tmp_path
) -> None:
    three_hosts.reset_stats()
    hosts = three_hosts.hosts
    urls = [three_hosts.url_for(f"/img/{'ab'[i % 2]}.jpg?n={i}", host=hosts[i % 3]) for i in range(150)]
    options = local_options(
        processes_count=processes,
        max_connections_per_host=3,
        thread_count=64,
        **NO_POLICY_FILES,
        output_format="parquet",
    )
    stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
    assert stats.successes == 150, _messages(tmp_path)
    seen = three_hosts.stats
    for host in hosts:
        assert 1 <= seen.host(host).peak_connections <= 3, (host, seen.host(host))
        assert seen.host(host).peak_in_flight <= 3


@pytest.mark.slow
def test_robots_txt_is_asked_once_per_origin_with_several_processes(
    three_hosts: ImageServer, tmp_path
) -> None:
    three_hosts.reset_stats()
    hosts = three_hosts.hosts
    urls = [three_hosts.url_for(f"/img/a.jpg?n={i}", host=hosts[i % 3]) for i in range(90)]
    options = local_options(processes_count=3, max_connections_per_host=4, output_format="parquet")
    stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
    assert stats.successes == 90, _messages(tmp_path)
    for policy_file in ("/robots.txt", "/.well-known/tdmrep.json", "/ai.txt"):
        assert three_hosts.stats.paths.count(policy_file) == 3, policy_file
    assert sum(three_hosts.stats.host(h).requests for h in hosts) == 90 + 3 * 3


@pytest.mark.slow
def test_cpu_heavy_images_do_not_make_other_requests_time_out(tmp_path) -> None:
    # 12 large PNGs (~100 ms of image work each) among 60 small JPEGs, from a fast server, with a
    # 1.5 s deadline. Image work on the network clock timed out most of them.
    images = {f"big{i}.png": _big_png(i) for i in range(3)} | {"small.jpg": make_image(3, 320, 240)}
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=120)) as server:
        urls = [
            server.url_for(f"/img/big{i % 3}.png?n={i}" if i % 6 == 0 else f"/img/small.jpg?n={i}")
            for i in range(72)
        ]
        options = local_options(
            timeout=1.5,
            thread_count=64,
            max_connections_per_host=64,
            **NO_POLICY_FILES,
            output_format="parquet",
        )
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        messages = _messages(tmp_path)
        assert not [m for m in messages if "timed out" in m]
        assert stats.successes == 72, messages
        assert stats.peak_worker_rss_mb <= 400


def test_throttled_with_retry_after_is_fetched_later_even_with_retries_0(tmp_path) -> None:
    images = {"a.jpg": make_image(1, 64, 48)}
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=60)) as server:
        urls = [server.url("a.jpg"), server.url_for("/hostile/retry-after-1/a.jpg")]
        options = local_options(retries=0, **NO_POLICY_FILES, output_format="parquet")
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        assert stats.successes == 2, _messages(tmp_path)
        times = server.stats.first_seen["/hostile/retry-after-1/a.jpg"]
        assert len(times) == 2 and times[1] - times[0] >= 0.9, "Retry-After was not honoured"


def test_a_rate_limited_host_under_load_is_queued_not_refused(tmp_path) -> None:
    # 30 rows at once for a host limited to 10 requests/s: all are fetched, none is refused,
    # and the run takes as long as the rate says (the site sees 10/s at most).
    with ImageServer(
        images={"a.jpg": make_image(1, 64, 48)}, config=ServerConfig(max_lifetime_s=60)
    ) as server:
        urls = [server.url_for(f"/img/a.jpg?n={i}") for i in range(30)]
        options = local_options(
            requests_per_second_per_host=10,
            thread_count=64,
            timeout=1,
            **NO_POLICY_FILES,
            output_format="parquet",
        )
        started = time.monotonic()
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        elapsed = time.monotonic() - started
        assert stats.successes == 30, _messages(tmp_path)
        assert server.stats.total_requests == 30
        assert elapsed >= 2.8, "requests went out faster than 10 per second"


def test_the_rate_limiter_reserves_only_for_requests_it_sends() -> None:
    async def scenario() -> tuple[list[float], float, int]:
        hosts = HostPoliteness(max_connections=256, requests_per_second=20.0, failure_limit=5)
        starts: list[float] = []
        refused = 0

        async def one() -> None:
            nonlocal refused
            try:
                async with hosts.turn("h"):
                    starts.append(time.monotonic())
            except HostRefused:
                refused += 1

        # 20 rows arrive at once, half of them cancelled while they wait (as a deadline would).
        tasks = [asyncio.create_task(one()) for _ in range(20)]
        await asyncio.sleep(0.12)
        for task in tasks[10:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A row arriving later is not pushed back by the reservations of cancelled ones.
        late = time.monotonic()
        async with hosts.turn("h"):
            late_wait = time.monotonic() - late
        return [b - a for a, b in itertools.pairwise(starts)], late_wait, refused

    gaps, late_wait, refused = asyncio.run(scenario())
    assert len(gaps) >= 9, "the rows that were not cancelled all started"
    assert refused == 0
    assert late_wait < 0.2, "cancelled rows pushed the rate slot back (refusal cascade)"
    assert all(gap >= 0.045 for gap in gaps), gaps


def test_a_host_with_a_few_rows_is_asked_over_one_connection(tmp_path) -> None:
    # Six rows and its policy files at 0.05 s an answer go through one connection in well under
    # DRAIN_S: a second connection (or six, one per row) would cost the site set-ups for nothing.
    config = ServerConfig(latency_s=(0.05, 0.05), max_lifetime_s=120)
    with ImageServer(images={"a.jpg": make_image(1, 64, 48)}, config=config) as server:
        urls = [server.url_for(f"/img/a.jpg?n={i}") for i in range(6)]
        options = local_options(thread_count=64, max_connections_per_host=8, output_format="parquet")
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        assert stats.successes == 6, _messages(tmp_path)
        seen = server.stats.host()
        assert seen.requests > 6, "the policy files were asked too"
        assert seen.total_connections == 1, seen


def test_a_host_with_a_long_queue_still_opens_every_connection_it_may(tmp_path) -> None:
    # 60 rows at 0.1 s an answer would take 6 s on one connection: the host gets its cap.
    config = ServerConfig(latency_s=(0.1, 0.1), max_lifetime_s=120)
    with ImageServer(images={"a.jpg": make_image(1, 64, 48)}, config=config) as server:
        urls = [server.url_for(f"/img/a.jpg?n={i}") for i in range(60)]
        options = local_options(
            thread_count=64, max_connections_per_host=4, **NO_POLICY_FILES, output_format="parquet"
        )
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        assert stats.successes == 60, _messages(tmp_path)
        assert server.stats.host().peak_in_flight == 4


def _completion_order(roles: list[str], waves: list[list[tuple[str, int]]]) -> list[str]:
    """Fetch rows of loopback hosts named by role, with one place in the window and one
    connection a host, wave after wave (each reaches the window's line before the next
    starts); the roles, digits dropped, in the order their rows completed."""

    async def scenario(server: ImageServer) -> list[str]:
        host_of = dict(zip(roles, server.hosts, strict=True))
        options = local_options(thread_count=1, max_connections_per_host=1, **NO_POLICY_FILES)
        order: list[str] = []
        async with Fetcher(options) as fetcher:

            async def row(role: str, n: int) -> None:
                body = await fetcher.fetch(server.url_for(f"/img/a.jpg?n={n}", host=host_of[role]))
                fetcher.window.release(len(body.data))
                order.append(role.rstrip("0123456789"))

            started: list[asyncio.Task[None]] = []
            for wave in waves:
                started += [asyncio.create_task(row(role, n)) for role, n in wave]
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*started), 30)
        return order

    config = ServerConfig(latency_s=(0.02, 0.02), extra_hosts=len(roles) - 1, max_lifetime_s=60)
    with ImageServer(images={"a.jpg": make_image(1, 64, 48)}, config=config) as server:
        return asyncio.run(scenario(server))


TAIL = [f"tail{i}" for i in range(5)]  # five one-image hosts


def test_a_host_with_a_queue_goes_ahead_of_one_image_hosts_in_the_window() -> None:
    """A head host's rows are the run's critical path (its cap bounds it); served in one line
    with a long tail's one-image hosts, its backlog ran alone at the end of the run."""
    order = _completion_order(["head", *TAIL], [[("head", n) for n in range(5)] + [(t, 0) for t in TAIL]])
    # Each head row but the last has rows queued behind it, so it waits for the next free place
    # only (with one connection it is queued just after its previous row leaves the window).
    # In one line, the head's second row waited behind all five tail rows.
    tails_before = [order[:k].count("tail") for k, who in enumerate(order) if who == "head"]
    assert len(tails_before) == 5 and order.count("tail") == 5, order
    assert all(waited <= n for n, waited in enumerate(tails_before[:4])), order


def test_a_host_that_gets_a_queue_takes_its_waiting_row_ahead() -> None:
    """A host's first row finds no queue (its other rows come just after it) and waits behind
    one-image hosts; when the rest of its rows queue for its one connection, it goes ahead."""
    waves = [
        [("blocker", 0)],  # takes the one place
        [(t, 0) for t in TAIL],
        [("head", 0)],  # no queue yet: it waits behind the tail
        [("head", n) for n in range(1, 4)],
    ]
    order = _completion_order(["blocker", "head", *TAIL], waves)
    assert sorted(order) == ["blocker"] + ["head"] * 4 + ["tail"] * 5, order
    # Without the promotion the head's first row came after all five tail rows.
    assert order.index("head") == 1, order


def test_a_turn_given_to_a_cancelled_row_goes_to_the_next() -> None:
    async def scenario() -> list[str]:
        hosts = HostPoliteness(max_connections=8, requests_per_second=None, failure_limit=5)
        order: list[str] = []
        release_first = asyncio.Event()

        async def row(name: str, hold: asyncio.Event | None = None) -> None:
            async with hosts.turn("h"):
                order.append(name)
                if hold is not None:
                    await hold.wait()

        # Before its first answer a host has one slot: b and c queue behind a.
        first = asyncio.create_task(row("a", release_first))
        await asyncio.sleep(0)
        second, third = asyncio.create_task(row("b")), asyncio.create_task(row("c"))
        await asyncio.sleep(0.01)
        release_first.set()
        await asyncio.sleep(0)  # a's release hands the slot to b ...
        second.cancel()  # ... which is cancelled before it runs
        await asyncio.wait_for(asyncio.gather(first, third, second, return_exceptions=True), 2)

        async def last() -> None:
            async with hosts.turn("h"):
                order.append("d")

        await asyncio.wait_for(last(), 2)  # the host is not left with a slot nobody holds
        return order

    assert asyncio.run(scenario()) == ["a", "c", "d"]


def test_rows_of_one_host_always_go_to_the_same_worker() -> None:
    urls = [f"https://h{i % 7}.example/{i}.jpg" for i in range(200)]
    owners: dict[str, set[int]] = {}
    for url in urls:
        owners.setdefault(url.split("/")[2], set()).add(worker_for(url, 4))
    assert all(len(w) == 1 for w in owners.values())
    assert worker_for("HTTP://H1.example:8080/x", 4) == worker_for("https://h1.example/y", 4)
    assert len({w for (w,) in owners.values()}) > 1, "hosts are spread over the workers"


@pytest.mark.slow
def test_one_host_still_spreads_image_work_over_every_worker(tmp_path) -> None:
    # Every row belongs to one host, so one worker fetches them all; its image thread falls
    # behind and the other worker's idle image thread takes the overflow.
    # PNGs: fully decoded (no reduced JPEG decode), so one image thread cannot keep up.
    images = {f"p{i}.png": make_image(i, 1000, 750, "png") for i in range(4)}
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=120)) as server:
        urls = [server.url_for(f"/img/p{i % 4}.png?n={i}") for i in range(160)]
        options = local_options(
            processes_count=2,
            thread_count=32,
            max_connections_per_host=16,
            **NO_POLICY_FILES,
            output_format="parquet",
        )
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
        assert stats.successes == 160, _messages(tmp_path)
        assert len(stats.rows_per_worker) == 2, stats.rows_per_worker
        assert min(stats.rows_per_worker.values()) >= 16, stats.rows_per_worker
        assert server.stats.host().peak_in_flight <= 16


def test_a_workers_backlog_goes_to_idle_image_threads_once_there_is_room() -> None:
    """Bodies that waited here while every worker was busy are handed on once another image
    thread is idle; left here, the last of them ran on one core while the others idled."""
    context = multiprocessing.get_context("spawn")
    shared = context.Queue(maxsize=4)
    loop = asyncio.new_event_loop()
    try:
        window = RequestWindow(max_requests=64, max_bytes=1 << 20)
        handoff = ImageHandoff(shared, window, loop)

        async def downloaded(index: int) -> ImageJob:
            async with window.request() as ticket:
                ticket.keep(100)
            return ImageJob(FetchTask(0, index, f"http://127.0.0.1/{index}"), b"x" * 100)

        others = [ImageJob(FetchTask(1, n, "other"), b"") for n in range(4)]
        for job in others:  # every worker is behind: the shared queue is full
            shared.put(job)
        for index in range(10):
            handoff.put(loop.run_until_complete(downloaded(index)))
        assert window.held_bytes == 1000  # all ten stayed here
        first, local = handoff.get()  # an image thread here; no room in the shared queue yet
        assert (first.task.index, local) == (0, True)
        assert window.held_bytes == 1000
        taken = [shared.get(timeout=5) for _ in range(4)]  # another worker's idle thread
        assert [job.task.shard_id for job in taken] == [1] * 4
        second, local = handoff.get()
        assert (second.task.index, local) == (1, True)
        spilled = sorted(shared.get(timeout=5).task.index for _ in range(4))
        # Four waiting bodies went to the room there and left this window; two stay here.
        assert spilled == [2, 3, 4, 5]
        assert window.held_bytes == 600  # the two being processed, and the four still waiting
        # The room made by taking them is filled again from here, down to LOCAL_BACKLOG (2).
        rest = [(job.task.index, local) for job, local in (handoff.get() for _ in range(4))]
        assert rest == [(6, True), (8, True), (9, True), (7, False)]
    finally:
        shared.close()
        shared.join_thread()
        loop.close()


_LOW_OPEN_FILES_RUN = """
import json, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
from dataset_assets.engine.runner import download_shard
from dataset_assets_tests.conftest import NO_POLICY_FILES, local_options, rows
options = local_options(thread_count=128, **NO_POLICY_FILES, output_format="parquet")
stats = download_shard(rows(json.loads(sys.argv[2])), sys.argv[3], options, shard_id=0)
print(json.dumps([stats.successes, stats.count]))
"""


def test_a_worker_started_under_a_low_open_files_limit_raises_it(tmp_path) -> None:
    """Many systems start processes with a soft limit of 1024 open files (macOS 256); a worker
    holding more connections than that failed each one past it with EMFILE (a host failure)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip(f"the hard limit on open files here is {hard}")
    config = ServerConfig(latency_s=(0.3, 0.3), extra_hosts=79, max_lifetime_s=120)
    with ImageServer(images={"a.jpg": make_image(1, 64, 48)}, config=config) as server:
        # 80 hosts answering in 0.3 s: about 80 connections open at once in one worker.
        urls = [server.url_for(f"/img/a.jpg?n={n}", host=host) for host in server.hosts for n in range(2)]
        done = subprocess.run(
            [sys.executable, "-c", _LOW_OPEN_FILES_RUN, "64", json.dumps(urls), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [160, 160], _messages(tmp_path)
