"""Per-host politeness for one worker process: backoff windows, rate limits, short-circuits.

Connection caps per host are the connector's job (``max_connections_per_host``); this keeps
the state that spans requests. All of it is per process: with ``processes_count`` workers a
host sees at most that many times the per-process limits, which the README states.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

# A server asking for more than this is treated as "not today": rows fail instead of waiting.
MAX_BACKOFF_WAIT_S = 60.0
BASE_BACKOFF_S = 1.0


class HostRefused(Exception):
    """A host is skipped without contacting it; ``str(exc)`` is the row's error message."""


@dataclass
class _HostState:
    not_before: float = 0.0  # monotonic time before which no request starts
    next_slot: float = 0.0  # rate limiter: earliest start of the next request
    failures_in_a_row: int = 0
    throttled_in_a_row: int = 0
    last_error: str = ""
    short_circuited: bool = False


class HostPoliteness:
    def __init__(
        self, requests_per_second: float | None, failure_limit: int, max_wait_s: float = MAX_BACKOFF_WAIT_S
    ) -> None:
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._failure_limit = failure_limit
        self._max_wait = max_wait_s
        self._hosts: dict[str, _HostState] = {}

    def _state(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState()
        return state

    async def wait_turn(self, host: str) -> None:
        """Sleep until this host may be contacted again; refuse if it is written off."""
        state = self._state(host)
        if state.short_circuited:
            raise HostRefused(
                f"host {host} skipped after {state.failures_in_a_row} failures in a row "
                f"(last: {state.last_error})"
            )
        now = time.monotonic()
        start = max(now, state.not_before)
        if self._interval:
            start = max(start, state.next_slot)
            state.next_slot = start + self._interval
        wait = start - now
        if wait > self._max_wait:
            raise HostRefused(f"host {host} asked to back off for {wait:.0f}s (over {self._max_wait:.0f}s)")
        if wait > 0:
            await asyncio.sleep(wait)

    def succeeded(self, host: str) -> None:
        state = self._state(host)
        state.failures_in_a_row = 0
        state.throttled_in_a_row = 0

    def throttled(self, host: str, retry_after: float | None) -> None:
        """429/503: no request to this host before Retry-After, or an exponential backoff."""
        state = self._state(host)
        state.throttled_in_a_row += 1
        if retry_after is None:
            retry_after = BASE_BACKOFF_S * 2 ** (state.throttled_in_a_row - 1)
        delay = retry_after
        state.not_before = max(state.not_before, time.monotonic() + delay)

    def failed(self, host: str, message: str) -> None:
        """A connection-level failure (timeout, refused, reset); enough in a row write the host off."""
        state = self._state(host)
        state.failures_in_a_row += 1
        state.last_error = message
        if self._failure_limit and state.failures_in_a_row >= self._failure_limit:
            state.short_circuited = True
