"""What a hand-written HTTP client core would save over aiohttp, per request, on loopback.

Why this exists: the long tail is CPU-bound, and the event loops' share of it is mostly the
HTTP client. Replacing aiohttp (for example with an asyncio protocol of our own for image GETs)
is a large, risky change (TLS, chunked bodies, encodings, redirects, proxies), so its best case
is measured first. The "raw" client here is that best case: one GET per write, a response
read for its Content-Length and body only, nothing else. No real client can cost less.
aiohttp runs as the engine's workers configure it (:func:`client_session`).

Both clients fetch the same image from the test server (its own process, on 127.0.0.1), with
a new connection per request (as a long tail's one-image hosts need) and with several requests
per connection (policy files, then the image, on one kept-alive connection). Each round runs
every (client, connection use) pair once, interleaved. CPU is the process's user + system time
while the requests run (the server's is not counted).

    .venv/bin/python -m bench.bench_client_core --requests 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from dataset_assets.engine.fetch import client_session
from dataset_assets.engine.options import DownloadOptions
from dataset_assets_tests.fakeweb.process import serve_in_subprocess
from dataset_assets_tests.fakeweb.server import ServerConfig

IN_FLIGHT = 32
BODY_BYTES = 40_000  # about a resized long-tail JPEG as served
CLIENTS = ("aiohttp", "raw")


class _OneResponse(asyncio.Protocol):
    """Reads one response after another: its Content-Length, then that many bytes; nothing else.

    Whether what came back is the whole image is checked on the total bytes received.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.body_size: int | None = None
        self.answer: asyncio.Future[bytes] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_size is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            start = head.index(b"content-length:") + len(b"content-length:")
            self.body_size = int(head[start : head.index(b"\r\n", start)])
        if len(self.buffer) >= self.body_size and self.answer is not None and not self.answer.done():
            body = bytes(self.buffer[: self.body_size])
            del self.buffer[: self.body_size]
            self.body_size = None
            self.answer.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("closed before the body ended"))
        if not self.closed.done():
            self.closed.set_result(None)


async def _raw(port: int, connections: int, per_connection: int) -> int:
    loop = asyncio.get_running_loop()
    request = b"GET /img/x.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: probe\r\nAccept: */*\r\n"

    async def one() -> int:
        transport, protocol = await loop.create_connection(_OneResponse, "127.0.0.1", port)
        got = 0
        for i in range(per_connection):
            protocol.answer = loop.create_future()
            last = i == per_connection - 1
            transport.write(request + (b"Connection: close\r\n\r\n" if last else b"\r\n"))
            got += len(await protocol.answer)
        transport.close()
        await protocol.closed
        return got

    return await _run(connections, one)


async def _aiohttp(port: int, connections: int, per_connection: int) -> int:
    url = f"http://127.0.0.1:{port}/img/x.jpg"
    # The connector's own per-host cap is above what is in flight: in the engine, the host's
    # budget holds requests back before they reach the connector, never inside it.
    options = DownloadOptions(allow_private_addresses=True, max_connections_per_host=IN_FLIGHT)
    async with client_session(options) as session:

        async def one() -> int:
            got = 0
            for i in range(per_connection):
                last = {"Connection": "close"} if i == per_connection - 1 else {}
                async with session.get(url, allow_redirects=False, headers=last) as response:
                    got += len(await response.read())
            return got

        return await _run(connections, one)


async def _run(connections: int, one: Callable[[], Awaitable[int]]) -> int:
    places = asyncio.Semaphore(IN_FLIGHT)

    async def bounded() -> int:
        async with places:
            return await one()

    return sum(await asyncio.gather(*(bounded() for _ in range(connections))))


def _cpu_us_per_request(client: str, port: int, requests: int, per_connection: int) -> float:
    connections = max(1, requests // per_connection)
    run = _raw if client == "raw" else _aiohttp
    started = os.times()
    received = asyncio.run(run(port, connections, per_connection))
    ended = os.times()
    if received != connections * per_connection * BODY_BYTES:
        raise SystemExit(
            f"{client}: got {received} bytes, expected {connections * per_connection * BODY_BYTES}"
        )
    cpu = (ended.user - started.user) + (ended.system - started.system)
    return 1e6 * cpu / (connections * per_connection)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_client_core", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=4000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--per-connection", type=int, nargs="+", default=[1, 3], help="requests per connection"
    )
    parser.add_argument(
        "--per-image",
        type=float,
        nargs=2,
        default=(0.46, 2.03),
        metavar=("CONNECTIONS", "REQUESTS"),
        help="what one long-tail image costs on the wire (the bench's connections and requests / images)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or min(args.per_connection) < 1:
        parser.error("--requests and --per-connection take numbers >= 1")
    with tempfile.TemporaryDirectory() as root:
        Path(root, "x.jpg").write_bytes(os.urandom(BODY_BYTES))
        with serve_in_subprocess(root, ServerConfig(max_lifetime_s=1800.0)) as server:
            port = server.port
            # warm-up: imports, the server's first connections
            for client in CLIENTS:
                _cpu_us_per_request(client, port, 200, 1)
            cost: dict[tuple[str, int], list[float]] = {}
            for round_ in range(1, args.rounds + 1):
                for per_connection in args.per_connection:
                    for client in CLIENTS:
                        us = _cpu_us_per_request(client, port, args.requests, per_connection)
                        cost.setdefault((client, per_connection), []).append(us)
                        print(f"round {round_} {client:7s} {per_connection}/connection: {us:6.0f} µs/request")
    print("\n== CPU per request, median of rounds (client process only) ==")
    median = {key: statistics.median(values) for key, values in cost.items()}
    for per_connection in args.per_connection:
        a, r = median[("aiohttp", per_connection)], median[("raw", per_connection)]
        print(
            f"  {per_connection}/connection: aiohttp {a:.0f} µs, raw {r:.0f} µs, aiohttp / raw {a / r:.2f}x"
        )
    if 1 in args.per_connection and max(args.per_connection) > 1:
        # Per request on a new connection (first + connect + close) and per kept-alive request,
        # from the two measurements: k requests on one connection cost new + (k - 1) kept.
        k = max(args.per_connection)

        def split(client: str) -> tuple[float, float]:
            new = median[(client, 1)]
            return new, (k * median[(client, k)] - new) / (k - 1)

        (a_new, a_kept), (r_new, r_kept) = split("aiohttp"), split("raw")
        print(f"  a new connection and its request: aiohttp {a_new:.0f} µs, raw {r_new:.0f} µs")
        print(f"  a request on a kept-alive connection: aiohttp {a_kept:.0f} µs, raw {r_kept:.0f} µs")
        connections, requests = args.per_image
        saved = connections * (a_new - r_new) + (requests - connections) * (a_kept - r_kept)
        print(
            f"  at most saved per long-tail image ({connections:g} new connections, {requests:g} "
            f"requests): {saved / 1000:.2f} CPU ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
