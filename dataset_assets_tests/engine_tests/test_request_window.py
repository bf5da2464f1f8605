"""The request window counts a body from its headers on, and a request as a big body.

A window that learned a body's size only once it was complete let the requests already in
flight land on a full window: on a list with 30 % 5 MB PNGs a worker held 300 MB of bodies.
"""

from __future__ import annotations

import asyncio

import pytest

from dataset_assets.engine.fetch import (
    ESTIMATE_OVER_BODIES,
    Fetcher,
    FetchError,
    RequestWindow,
    body_estimate,
)
from dataset_assets_tests.conftest import local_options
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

BIG = b"\xff\xd8\xff" + bytes(range(256)) * 8192  # 2 MB that sniff as a JPEG


async def _until(condition, limit_s: float = 10.0) -> bool:
    for _ in range(int(limit_s / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def test_a_body_counts_while_it_arrives_and_leaves_when_its_request_fails() -> None:
    async def scenario(server: ImageServer) -> tuple[bool, int, int, int]:
        async with Fetcher(local_options(timeout=2, retries=0)) as fetcher:
            window = fetcher.window
            trickling = asyncio.create_task(fetcher.fetch(server.url_for("/trickle/big.jpg")))
            # The declared length is held as soon as the headers are in, long before the body.
            counted = await _until(lambda: window.held_bytes >= len(BIG))
            with pytest.raises(FetchError, match="timed out"):
                await trickling
            after_failure = window.held_bytes
            body = await fetcher.fetch(server.url_for("/img/big.jpg"))
            kept = window.held_bytes
            window.release(len(body.data))
            return counted, after_failure, kept, window.held_bytes

    with ImageServer(images={"big.jpg": BIG}, config=ServerConfig(max_lifetime_s=60)) as server:
        counted, after_failure, kept, released = asyncio.run(scenario(server))
    assert counted, "a trickling body's declared length was never counted in the window"
    assert after_failure == 0  # a failed request gives its bytes back
    assert kept == len(BIG)  # a complete body stays held until the image stage is done with it
    assert released == 0


def test_a_request_counts_as_a_big_body_when_big_bodies_are_common() -> None:
    window = RequestWindow(max_requests=256, max_bytes=48 << 20)
    sizes = [5_000_000] * 30 + [50_000] * 70  # the large ones first, then a run of small ones
    for size in sizes:
        window._record(size)
    # Counted at the mean (1.5 MB), 32 requests would be let in: 150 MB if they were PNGs.
    assert window.per_request_bytes == 5_000_000
    admitted = 0
    while window._has_room():
        window._in_flight += 1
        admitted += 1
    assert admitted == (48 << 20) // 5_000_000
    window._in_flight = 0
    # A list of small images is not held back: the cap on requests binds, not the bytes.
    for _ in range(ESTIMATE_OVER_BODIES):
        window._record(50_000)
    assert body_estimate([50_000] * 256) == window.per_request_bytes == 50_000
    admitted = 0
    while window._has_room():
        window._in_flight += 1
        admitted += 1
    assert admitted == 256


def test_the_estimate_starts_at_a_megabyte_and_follows_the_bodies() -> None:
    assert body_estimate([]) == 1024 * 1024
    assert body_estimate([10_000] * 4) == 1024 * 1024  # four small bodies prove little
    assert body_estimate([10_000] * 100) == 10_000
    assert body_estimate([10_000] * 80 + [900_000] * 20) == 900_000  # the 90th percentile


def test_bytes_given_back_from_another_thread_let_a_waiting_request_in() -> None:
    """The image thread gives bodies back without waking the loop unless a request waits; a
    request that queued just as the bytes came back must still get in (no lost wake-up)."""
    import threading

    async def scenario() -> tuple[bool, bool, int, bool]:
        loop = asyncio.get_running_loop()
        window = RequestWindow(max_requests=4, max_bytes=1000)
        for _ in range(2):
            async with window.request() as ticket:
                ticket.keep(700)  # complete bodies, waiting for the image stage
        nobody_waits = not window.give_back_from_thread(400)  # 1000 still held: the window is full
        woke = threading.Event()

        def image_thread() -> None:
            if window.give_back_from_thread(600):  # the request waits: wake the loop
                woke.set()
                loop.call_soon_threadsafe(window.wake)

        async def waiting_request() -> int:
            async with window.request():
                return window.held_bytes

        waiter = asyncio.create_task(waiting_request())
        await asyncio.sleep(0.05)
        still_waiting = not waiter.done()
        threading.Thread(target=image_thread).start()
        held_inside = await asyncio.wait_for(waiter, 5)
        return nobody_waits, still_waiting, held_inside, woke.is_set()

    nobody_waits, still_waiting, held_inside, woke = asyncio.run(scenario())
    assert nobody_waits  # no request waited: the loop need not be woken for the first 400
    assert still_waiting  # the 400 were counted out, and 1000 bytes still filled the window
    assert held_inside == 400  # both give-backs were counted out when the request got in
    assert woke


def test_policy_files_do_not_take_the_images_places() -> None:
    """A slow origin's policy files (three answers in a row) must not hold back the images of
    origins whose files are in: on a long tail, thousands of new origins' policy loads queued
    ahead of every image and the cores waited."""

    async def scenario(slow: ImageServer, fast: ImageServer) -> tuple[bool, bool]:
        async with Fetcher(local_options(thread_count=1, timeout=20, retries=0)) as fetcher:
            known = await fetcher.fetch(fast.url_for("/img/a.jpg"))  # the fast origin's files are in
            fetcher.window.release(len(known.data))
            slow_row = asyncio.create_task(fetcher.fetch(slow.url_for("/img/a.jpg")))
            await asyncio.sleep(0.2)  # its policy load has begun (about 3 x 1.5 s)
            body = await asyncio.wait_for(fetcher.fetch(fast.url_for("/img/b.jpg")), 3)
            fetcher.window.release(len(body.data))
            slow_still_loading = not slow_row.done()
            slow_body = await asyncio.wait_for(slow_row, 15)
            fetcher.window.release(len(slow_body.data))
            return slow_still_loading, slow_body.data == BIG

    images = {"a.jpg": BIG, "b.jpg": BIG}
    slow_config = ServerConfig(latency_s=(1.5, 1.5), max_lifetime_s=60)
    with (
        ImageServer(images=images, config=slow_config) as slow,
        ImageServer(images=images, config=ServerConfig(host="127.0.0.2", max_lifetime_s=60)) as fast,
    ):
        slow_still_loading, slow_ok = asyncio.run(scenario(slow, fast))
    assert slow_still_loading  # the fast origin's image did not wait for the slow one's files
    assert slow_ok
