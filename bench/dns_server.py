"""A small DNS server for the long-tail traffic shape: many host names, slow cold lookups.

It plays a caching recursive resolver: the first query for a name waits ``cold_s`` (tens of
milliseconds, as a lookup that has to go out to the name's authority does), later ones answer
at once. Names ``<anything>.ip<N>.test`` resolve to 127.0.0.N (A records only; AAAA gets an
empty answer); everything else is NXDOMAIN. With ``lose_first`` N, the first N queries of each
(name, type) get no answer at all, as datagrams lost on a loaded network or resolver. It only
ever binds 127.0.0.1, so it is meant to run inside a network namespace of its own (``unshare
-n -m`` with a bind-mounted resolv.conf), never in place of the machine's resolver. It stops
by itself after its lifetime.
"""

from __future__ import annotations

import asyncio
import collections
import random
import struct
import threading
import time

A, AAAA = 1, 28
NXDOMAIN, NOERROR, FORMERR = 3, 0, 1
TTL_S = 300


def parse_question(packet: bytes) -> tuple[int, int, str, int, bytes] | None:
    """(id, flags, lower-case name, qtype, raw question) of a one-question query, or None."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack(">HHH", packet[:6])
    if qdcount != 1:
        return None
    labels, pos = [], 12
    while pos < len(packet):
        length = packet[pos]
        pos += 1
        if length == 0:
            break
        if length > 63 or pos + length > len(packet):
            return None
        labels.append(packet[pos : pos + length].decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(packet):
        return None
    qtype = struct.unpack(">H", packet[pos : pos + 2])[0]
    return ident, flags, ".".join(labels), qtype, packet[12 : pos + 4]


def address_for(name: str) -> str | None:
    """127.0.0.N for ``*.ipN.test`` (1 <= N <= 254), else None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "test" and parts[-2].startswith("ip"):
        number = parts[-2][2:]
        if number.isdigit() and 1 <= int(number) <= 254:
            return f"127.0.0.{int(number)}"
    return None


def answer(query: bytes) -> bytes | None:
    parsed = parse_question(query)
    if parsed is None:
        return None
    ident, flags, name, qtype, question = parsed
    address = address_for(name)
    rcode = NOERROR if address is not None else NXDOMAIN
    records = b""
    if address is not None and qtype == A:
        rdata = bytes(int(x) for x in address.split("."))
        records = b"\xc0\x0c" + struct.pack(">HHIH", A, 1, TTL_S, 4) + rdata
    reply_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    header = struct.pack(">HHHHHH", ident, reply_flags, 1, 1 if records else 0, 0, 0)
    return header + question + records


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: SlowDns) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data)
        if reply is None or self._transport is None:
            return
        parsed = parse_question(data)
        delay = self._server.delay_for(parsed[2], parsed[3]) if parsed else 0.0
        if delay is None:
            return
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._transport.sendto, reply, addr)
        else:
            self._transport.sendto(reply, addr)


class SlowDns:
    """The server, on its own thread and event loop; counts queries per name."""

    def __init__(
        self,
        cold_s: tuple[float, float] = (0.04, 0.08),
        port: int = 53,
        lifetime_s: float = 3600.0,
        lose_first: int = 0,
    ) -> None:
        self.cold_s = cold_s
        self.lose_first = lose_first
        self._asked: collections.Counter[tuple[str, int]] = collections.Counter()
        self.port = port
        self.lifetime_s = lifetime_s
        self._ready_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self.queries: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def delay_for(self, name: str, qtype: int) -> float | None:
        """Seconds until this name's answer is known (0 once it is cached), None if this query
        is lost. Counts A queries: one per lookup whatever else (AAAA) the client asks alongside."""
        now = time.monotonic()
        with self._lock:
            if qtype == A:
                self.queries[name] += 1
            self._asked[(name, qtype)] += 1
            if self._asked[(name, qtype)] <= self.lose_first:
                return None
            ready = self._ready_at.get(name)
            if ready is None:
                ready = self._ready_at[name] = now + self._rng.uniform(*self.cold_s)
        return max(0.0, ready - now)

    def reset(self, forget_cache: bool = True) -> None:
        """Zero the counters (and make every name cold again): call between measured runs."""
        with self._lock:
            self.queries.clear()
            self._asked.clear()
            if forget_cache:
                self._ready_at.clear()

    def start(self) -> SlowDns:
        self._thread = threading.Thread(target=self._main, name="slow-dns", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            transport, _ = loop.run_until_complete(
                loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=("127.0.0.1", self.port))
            )
        except OSError as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        loop.call_later(self.lifetime_s, loop.stop)
        try:
            loop.run_forever()
        finally:
            transport.close()
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> SlowDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
