"""Per-host politeness: one budget per host for the whole run, and queues instead of timeouts.

Why this lives in one worker process and is still "per run": the runner routes every row of a
host to the same worker (:func:`worker_for`), so that worker's state *is* the run's state for
the host: its connection cap, rate limit, backoff window and failure count are what the site
sees from the whole run, whatever ``processes_count`` is.

A row waits for its host's turn here, *before* its request deadline starts: waiting for our
own politeness is queueing, never a timeout and never a host failure. Rows of other hosts do
not wait behind it (each host has its own queue).

Connections open as a host's queue needs them, up to the cap: a host starts with one, and gets
more only when its waiting rows would take longer than :data:`DRAIN_S` to go through the ones it
has, at its own measured answer time (Little's law). Most hosts of a web-scale list hold a few
rows, and a few rows in a row on one kept-alive connection cost the site (and us) one connection
set-up, and one TLS handshake, instead of one per row. A host keeps the concurrency it reached
while its connections may still be kept alive, so a draining queue never waits behind idle ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# A server asking for more than this is treated as "not today": rows fail instead of waiting.
MAX_BACKOFF_WAIT_S = 60.0
BASE_BACKOFF_S = 1.0
# A host's waiting rows should go through in about this long: more connections open only beyond.
DRAIN_S = 1.0
# How long a host's connections may stay open unused (the Fetcher's connector keeps them this
# long). Why not aiohttp's 15 s: on a long tail an origin's policy files open its connection
# well before its image's turn in the request window; at 15 s, 20 000 rows over 6 870 origins
# took about 10 000 connections, at 30 s about 7 150.
KEPT_ALIVE_S = 30.0
# Weight of the newest answer time in a host's running estimate.
ANSWER_TIME_WEIGHT = 0.3


class HostRefused(Exception):
    """A host is skipped without contacting it; ``str(exc)`` is the row's error message."""


def host_key(url: str) -> str:
    """The unit of politeness: the host name, lower-cased (every scheme and port of it)."""
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:  # malformed URL: the worker records why; any worker may do that
        return ""


def worker_for(url: str, workers: int) -> int:
    """The worker that owns ``url``'s host for the whole run (stable across processes)."""
    return zlib.crc32(host_key(url).encode("utf-8", "surrogatepass")) % workers if workers > 1 else 0


@dataclass
class _HostState:
    active: int = 0  # rows holding a connection slot
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    answer_s: float | None = None  # running estimate of one request's time; None: never asked
    reached: int = 0  # the most slots held at once since the host was last idle for long
    idle_since: float = 0.0
    not_before: float = 0.0  # monotonic time before which no request starts (server backoff)
    next_slot: float = 0.0  # rate limiter: earliest start of the next request
    failures_in_a_row: int = 0
    throttled_in_a_row: int = 0
    last_error: str = ""
    short_circuited: bool = False


class HostPoliteness:
    """Admission per host: at most ``max_connections`` requests at once, ``requests_per_second``,
    the server's backoff, and the short-circuit of a host that is down."""

    def __init__(
        self,
        max_connections: int,
        requests_per_second: float | None,
        failure_limit: int,
        max_wait_s: float = MAX_BACKOFF_WAIT_S,
        on_queue: Callable[[str], None] | None = None,
    ) -> None:
        """``on_queue(host)``: called when rows of ``host`` start to wait for its turn."""
        self._on_queue = on_queue
        self._max_connections = max_connections
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._failure_limit = failure_limit
        self._max_wait = max_wait_s
        self._hosts: dict[str, _HostState] = {}

    def _state(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState()
        return state

    def _allowed(self, state: _HostState) -> int:
        """Slots the host may use now: what drains its queue within DRAIN_S, at least what it
        reached while its connections may still be open, and one before its first answer."""
        if state.answer_s is None:
            return 1
        demand = state.active + len(state.waiting)
        needed = math.ceil(demand * state.answer_s / DRAIN_S)
        return max(1, min(self._max_connections, max(needed, state.reached)))

    async def _acquire(self, host: str, state: _HostState) -> None:
        if not state.waiting and state.active < self._allowed(state):
            self._take(state)
            return
        granted = asyncio.get_running_loop().create_future()
        state.waiting.append(granted)
        if len(state.waiting) == 1 and self._on_queue is not None:
            self._on_queue(host)
        self._hand_out(state)  # a longer queue may warrant another connection
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(state)  # granted, then cancelled before it ran: pass it on
            else:
                with contextlib.suppress(ValueError):
                    state.waiting.remove(granted)
            raise

    def _take(self, state: _HostState) -> None:
        if state.active == 0 and time.monotonic() - state.idle_since > KEPT_ALIVE_S:
            state.reached = 0  # its kept-alive connections have closed by now
        state.active += 1
        state.reached = max(state.reached, state.active)

    def _release(self, state: _HostState) -> None:
        state.active -= 1
        if state.active == 0:
            state.idle_since = time.monotonic()
        self._hand_out(state)

    def _hand_out(self, state: _HostState) -> None:
        while state.waiting and state.active < self._allowed(state):
            granted = state.waiting.popleft()
            if not granted.done():
                granted.set_result(None)
                self._take(state)

    @contextlib.asynccontextmanager
    async def turn(self, host: str) -> AsyncIterator[None]:
        """Hold one of the host's connection slots for one request, once the host may be asked.

        Raises :class:`HostRefused` only for the site's own reasons (it is down, or asked for a
        backoff longer than we wait), never because our queue is long.
        """
        state = self._state(host)
        self._refuse_if_written_off(state, host)
        await self._acquire(host, state)
        try:
            await self._wait_for_start(host, state)
            yield
        finally:
            self._release(state)

    def answered(self, host: str, seconds: float) -> None:
        """One request to ``host`` took ``seconds``, from sending to the end of its body (or its
        error): what sizes the host's connections."""
        state = self._state(host)
        if state.answer_s is None:
            state.answer_s = seconds
        else:
            state.answer_s += ANSWER_TIME_WEIGHT * (seconds - state.answer_s)
        self._hand_out(state)

    async def _wait_for_start(self, host: str, state: _HostState) -> None:
        # A loop, not one sleep: while we slept another row may have been throttled (moving
        # not_before) or taken the rate slot. The slot is reserved only when we really start,
        # so a refused or cancelled row never pushes the next one back.
        while True:
            self._refuse_if_written_off(state, host)
            now = time.monotonic()
            backoff = state.not_before - now
            if backoff > self._max_wait:
                raise HostRefused(
                    f"host {host} asked to back off for {backoff:.0f}s (over {self._max_wait:.0f}s)"
                )
            start = max(now, state.not_before, state.next_slot)
            if start <= now:
                if self._interval:
                    state.next_slot = now + self._interval
                return
            await asyncio.sleep(start - now)

    def queued(self, host: str) -> bool:
        """Whether rows of ``host`` wait for its budget (the host's cap is what bounds it)."""
        return bool(self._state(host).waiting)

    def check(self, host: str) -> None:
        """Refuse now if the host was written off while this row waited for something else."""
        self._refuse_if_written_off(self._state(host), host)

    def _refuse_if_written_off(self, state: _HostState, host: str) -> None:
        if state.short_circuited:
            raise HostRefused(
                f"host {host} skipped after {state.failures_in_a_row} failures in a row "
                f"(last: {state.last_error})"
            )

    def succeeded(self, host: str) -> None:
        state = self._state(host)
        state.failures_in_a_row = 0
        state.throttled_in_a_row = 0

    def throttled(self, host: str, retry_after: float | None) -> None:
        """429/503: no request to this host before Retry-After, or an exponential backoff."""
        state = self._state(host)
        state.throttled_in_a_row += 1
        if retry_after is None:
            retry_after = BASE_BACKOFF_S * 2 ** min(state.throttled_in_a_row - 1, 10)
        state.not_before = max(state.not_before, time.monotonic() + retry_after)

    def failed(self, host: str, message: str) -> None:
        """A real host failure (refused, reset, DNS, timeout after sending, 5xx); enough in a row
        write the host off for the run."""
        state = self._state(host)
        state.failures_in_a_row += 1
        state.last_error = message
        if self._failure_limit and state.failures_in_a_row >= self._failure_limit:
            state.short_circuited = True
