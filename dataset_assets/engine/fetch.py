"""HTTP fetching for one worker process: one aiohttp session, a total deadline per request.

Why not urllib threads like img2dataset: its timeout is per socket operation (a trickling
server never times out), it opens a new connection per image and resolves DNS every time.
Here one event loop per process keeps connections alive, caches DNS, bounds every request by
a wall-clock deadline, caps the body while streaming it, and follows redirects by hand so each
hop is re-checked (scheme, address, loop).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import email.utils
import functools
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from yarl import URL

from dataset_assets import __version__
from dataset_assets.engine.addresses import AddressRefused, SafeResolver, check_host
from dataset_assets.engine.consent.origin_policy import (
    PolicyFile,
    Unavailable,
    Verdict,
    files_to_fetch,
    header_verdict,
    judge,
    no_policy,
    parse_policy,
)
from dataset_assets.engine.consent.robots import MAX_ROBOTS_BYTES
from dataset_assets.engine.options import MAX_POLICY_LOADS, DownloadOptions
from dataset_assets.engine.politeness import KEPT_ALIVE_S, HostPoliteness, HostRefused, host_key

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Status codes worth retrying: the same request may succeed later. 404/403/410 never do.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
READ_CHUNK = 64 * 1024
# Per-origin policy files (robots.txt, tdmrep.json, ai.txt) share robots.txt's limits.
ROBOTS_TIMEOUT_S = 10.0
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2
# An error page for a policy file is read (and dropped) up to this size, keeping the connection.
MAX_DRAINED_ERROR_BYTES = 64 * 1024
ROBOTS_RETRY_S = 30.0  # an unavailable policy file is asked again after this long (not per row)
# A throttled row with a Retry-After is retried this many times after the wait, on top of retries.
MAX_THROTTLED_RETRIES = 3
# What one worker holds in bodies (in flight and waiting for the image stage); see RequestWindow.
MAX_HELD_BODY_BYTES = 48 * 1024 * 1024
INITIAL_MEAN_BODY_BYTES = 1024 * 1024
# The window sizes one request by the bodies of the last ESTIMATE_OVER_BODIES (see RequestWindow).
ESTIMATE_OVER_BODIES = 256
ESTIMATE_PRIOR_BODIES = 16  # the 1 MB guess weighs as much as this many bodies, until seen
ESTIMATE_QUANTILE = 0.9
ESTIMATE_EVERY = 16  # bodies between two estimates (a sort of 256 sizes)
MIN_REQUESTS_IN_FLIGHT = 4
PRODUCT_TOKEN = "dataset-assets"
# img2dataset's token: we accept its command lines, and AI block lists name it.
IMG2DATASET_TOKEN = "img2dataset"

T = TypeVar("T")

# Leading bytes of formats the decoder understands; used to tell an error page from an image
# served with the wrong Content-Type.
IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


class FetchError(Exception):
    """A failed download; ``str(exc)`` is the row's error_message.

    ``transient``: the same request may succeed later (worth a retry). ``throttled``: the host
    asked us to slow down (429/503). ``host_failure``: the host itself seems down (timeout,
    connection refused or reset, 5xx); enough of these in a row and the host is skipped.
    ``opt_out``: the site refused this use; the key of :data:`consent.SIGNALS` that said so.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        throttled: bool = False,
        host_failure: bool = False,
        opt_out: str | None = None,
    ) -> None:
        super().__init__(message)
        self.opt_out = opt_out
        self.transient = transient
        self.retry_after = retry_after
        self.throttled = throttled
        self.host_failure = host_failure


@dataclass(slots=True)
class FetchedBody:
    data: bytes
    content_type: str
    final_url: str


def user_agent(token: str | None) -> str:
    """A UA that names the project (and the user's token), so site owners can identify us."""
    suffix = f"; {token.lower()}" if token else ""
    return f"Mozilla/5.0 (compatible; {PRODUCT_TOKEN}/{__version__}{suffix}; image dataset builder)"


def looks_like_image(data: bytes) -> bool:
    if data.startswith(IMAGE_MAGIC):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def disallowing_directive(
    header_values: list[str], our_tokens: tuple[str, ...], disallowed: tuple[str, ...]
) -> str | None:
    """The first X-Robots-Tag directive that forbids our use of the image, if any.

    A value is ``[user-agent:] directive, directive``; it applies when it names no user agent
    or one of ours (the user's token or the project's). ``unavailable_after: <date>`` is a
    directive, not a user agent.
    """
    if not disallowed:
        return None
    for value in header_values:
        agent, sep, rest = value.partition(":")
        agent = agent.strip().lower()
        if sep and agent != "unavailable_after" and " " not in agent:
            if agent not in our_tokens:
                continue
            directives = rest
        else:
            directives = value
        for directive in directives.split(","):
            if directive.strip().lower() in disallowed:
                return directive.strip().lower()
    return None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class BodyTicket:
    """The bytes one request holds in its window: what the body declared, then what arrived.

    Why count a body while it arrives: a window that learns a body's size only once it is
    complete lets every request already in flight land on top of a full window (a PNG-heavy
    list took a worker past 550 MB that way, 300 MB of it bodies waiting for the image thread).
    """

    __slots__ = ("_window", "bytes", "kept")

    def __init__(self, window: RequestWindow) -> None:
        self._window = window
        self.bytes = 0
        self.kept = False

    def cover(self, total: int) -> None:
        """The body is known to need ``total`` bytes (declared, or read so far)."""
        if total > self.bytes:
            self._window._held_bytes += total - self.bytes
            self.bytes = total

    def keep(self, size: int) -> None:
        """The body (``size`` bytes) is complete and stays held until the caller releases it."""
        self._window._held_bytes += size - self.bytes
        self.bytes = size
        self.kept = True
        self._window._record(size)


def body_estimate(sizes: collections.abc.Collection[int]) -> float:
    """Bytes to count for one request: the larger of the mean and the 90th percentile of
    ``sizes``, with a 1 MB prior until enough bodies were seen.

    Why not the mean alone: body sizes on image lists are heavy-tailed (thumbnails and
    multi-megabyte PNGs), and big bodies come in runs (one host, one gallery); counting each
    request at a high quantile keeps a run of big ones within the window, and costs nothing on
    lists of small images, where the cap on requests binds first.
    """
    seen = len(sizes)
    prior = max(0, ESTIMATE_PRIOR_BODIES - seen)
    mean = (sum(sizes) + prior * INITIAL_MEAN_BODY_BYTES) / max(1, seen + prior)
    if seen < ESTIMATE_PRIOR_BODIES:
        return max(mean, float(INITIAL_MEAN_BODY_BYTES))
    ordered = sorted(sizes)
    return max(mean, float(ordered[min(seen - 1, int(ESTIMATE_QUANTILE * seen))]))


class RequestWindow:
    """What bounds one worker's memory: requests in flight and body bytes not yet handed on.

    Why adaptive: 256 requests of 50 KB JPEGs hold 13 MB, 256 of 8 MB PNGs would hold 2 GB. The
    number in flight is capped so that bodies in flight plus bodies waiting for the image stage
    stay within ``max_bytes``; bodies count as they arrive (see :class:`BodyTicket`). A request
    is counted at :func:`body_estimate` of recent bodies, not at their mean: on a list where
    30 % are 5 MB PNGs, the mean (1.5 MB) let 32 requests in, and when most of them were PNGs
    they landed 150 MB over the window.
    Waiting here happens before a request's deadline starts, like waiting for a host's turn.
    Waiters are woken in order, one per free place (a condition variable would wake them all
    on every request), those of a host with a queue first (see :meth:`request`).
    """

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._in_flight = 0
        self._held_bytes = 0
        self._recent: collections.deque[int] = collections.deque(maxlen=ESTIMATE_OVER_BODIES)
        self._since_estimate = 0
        self._per_request = float(INITIAL_MEAN_BODY_BYTES)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiters_ahead: collections.deque[asyncio.Future[None]] = collections.deque()
        # The waiters of the other line, by host, so that a host that gets a queue (see
        # :meth:`promote`) takes its rows already waiting here ahead with it.
        self._behind: dict[str, dict[asyncio.Future[None], None]] = {}
        # Bodies given back from another thread (the image stage), not yet counted out here.
        self._given_back: collections.deque[int] = collections.deque()

    @property
    def held_bytes(self) -> int:
        self._count_given_back()
        return self._held_bytes

    @property
    def per_request_bytes(self) -> float:
        """What the window counts one request in flight to bring."""
        return self._per_request

    def _record(self, size: int) -> None:
        self._recent.append(max(size, 1))
        self._since_estimate += 1
        if self._since_estimate >= ESTIMATE_EVERY or len(self._recent) < ESTIMATE_EVERY:
            self._since_estimate = 0
            self._per_request = body_estimate(self._recent)

    def _count_given_back(self) -> None:
        while self._given_back:
            self._held_bytes -= self._given_back.popleft()

    def _has_room(self) -> bool:
        self._count_given_back()
        room = self._max_bytes - self._held_bytes
        limit = min(self._max_requests, max(MIN_REQUESTS_IN_FLIGHT, int(room // self._per_request)))
        return self._in_flight < limit and self._held_bytes < self._max_bytes

    @contextlib.asynccontextmanager
    async def request(self, host: str = "", ahead: bool = False) -> AsyncIterator[BodyTicket]:
        """A place in the window; the ticket's bytes are given back unless the body is kept.

        ``ahead``: ``host`` has rows queued behind this one for its own budget, so it goes
        before requests of hosts that have none (and one that waits here goes ahead when its
        host gets a queue, see :meth:`promote`). Why: such a host can only go as fast as its
        connection cap allows, so its rows are the run's critical path, while the rows of a
        long tail's one-image hosts can go at any time. Served in one line, a head host holding
        1 100 of a long tail's 20 000 rows got its 8 places once per ~1 400 waiters while the
        cores were busy, and its backlog then ran alone, at its cap, for the last quarter of
        the run with the cores mostly idle.
        """
        if self._waiters_ahead or (self._waiters and not ahead) or not self._has_room():
            granted = asyncio.get_running_loop().create_future()
            if ahead:
                self._waiters_ahead.append(granted)
            else:
                self._waiters.append(granted)
                self._behind.setdefault(host, {})[granted] = None
            self._wake()  # bytes given back by another thread just before we queued
            try:
                await granted  # _wake counted us in
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._in_flight -= 1  # granted, then cancelled: pass the place on
                    self._wake()
                raise
            finally:
                if not ahead:
                    self._forget(host, granted)
        else:
            self._in_flight += 1
        ticket = BodyTicket(self)
        try:
            yield ticket
        finally:
            self._in_flight -= 1
            if not ticket.kept:
                self._held_bytes -= ticket.bytes
            self._wake()

    def promote(self, host: str) -> None:
        """``host`` has rows queued for its budget now: its rows waiting here go ahead.

        Why: a host's first row finds no queue (its other rows come just after it), so it
        waits in the other line, and the host's queue waits behind it for its one connection.
        """
        for granted in self._behind.pop(host, ()):
            if not granted.done():
                self._waiters_ahead.append(granted)  # its entry in the other line is skipped

    def _forget(self, host: str, granted: asyncio.Future[None]) -> None:
        waiting = self._behind.get(host)
        if waiting is not None:
            waiting.pop(granted, None)
            if not waiting:
                del self._behind[host]

    def release(self, size: int) -> None:
        self._held_bytes -= size
        self._wake()

    def give_back_from_thread(self, size: int) -> bool:
        """From another thread: ``size`` bytes leave the window. Returns whether a request is
        waiting for room, so that the caller must wake the loop (it then calls :meth:`wake`).

        Why not wake the loop every time: waking it costs a system call on each side, about
        5 % of a small JPEG's CPU, and while no request waits, the bytes are counted out as
        soon as the loop next asks for room. Order makes it safe without a lock: the bytes are
        queued before the waiters are looked at here, and a request queues itself before it
        looks at the bytes again (in :meth:`request`).
        """
        self._given_back.append(size)
        return bool(self._waiters_ahead or self._waiters)

    def wake(self) -> None:
        """On the loop: let in what the bytes given back from other threads make room for."""
        self._wake()

    def _wake(self) -> None:
        while (self._waiters_ahead or self._waiters) and self._has_room():
            waiter = (self._waiters_ahead or self._waiters).popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)


def client_session(options: DownloadOptions) -> aiohttp.ClientSession:
    """The one HTTP client a worker uses (create it inside the worker's running loop)."""
    connector = aiohttp.TCPConnector(
        # The host budget and the request window bound connections before a request's
        # deadline starts; the connector's own per-host cap is only a safety net for
        # redirects to other hosts (a wait inside it would count against the deadline).
        limit=0,
        limit_per_host=options.max_connections_per_host,
        ttl_dns_cache=None,  # one lookup per name per run (its rows all come to this worker)
        use_dns_cache=True,
        resolver=SafeResolver(options.allow_private_addresses),
        enable_cleanup_closed=True,
        keepalive_timeout=KEPT_ALIVE_S,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": user_agent(options.user_agent_token), "Accept": "image/*,*/*;q=0.5"},
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
    )


class Fetcher:
    """Downloads URLs within one event loop; create and use it inside a worker process."""

    def __init__(self, options: DownloadOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self._disallowed = tuple(d.lower() for d in options.disallowed_header_directives)
        self.window = RequestWindow(options.thread_count, MAX_HELD_BODY_BYTES)
        self._hosts = HostPoliteness(
            options.max_connections_per_host,
            options.requests_per_second_per_host,
            options.host_failure_limit,
            on_queue=self.window.promote,
        )
        self._policy_window = asyncio.Semaphore(min(options.thread_count, MAX_POLICY_LOADS))
        # (origin, file path) -> when asked, the file's rules; one request per file per origin.
        self._policies: dict[tuple[str, str], tuple[float, asyncio.Future[PolicyFile]]] = {}
        self._policy_paths = files_to_fetch(options)
        self._policy_loaders: set[asyncio.Future[None]] = set()
        tokens = (options.user_agent_token, PRODUCT_TOKEN, IMG2DATASET_TOKEN)
        self._product_tokens = tuple(dict.fromkeys(t.lower() for t in tokens if t))

    async def __aenter__(self) -> Fetcher:
        self._session = client_session(self._options)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> FetchedBody:
        """Fetch one image: the origin's policy files, then the host's turn, then the request.

        Retries transient failures ``retries`` times; a throttled answer with a Retry-After we
        can honour is retried after that delay whatever ``retries`` says (the site asked us to
        come back, it did not fail). The returned body is held in :attr:`window` until the
        caller releases it.
        """
        host = host_key(url)
        retries_left = self._options.retries
        comebacks_left = MAX_THROTTLED_RETRIES
        for attempt in itertools.count():
            try:
                first = _checked_url(url, self._options.allow_private_addresses)
                if self._policy_paths:
                    await self._check_policies(first)
                async with (
                    self._hosts.turn(host),
                    # asked once the row holds its host's turn: are rows of the host queued behind it?
                    self.window.request(host, self._hosts.queued(host)) as ticket,
                ):
                    self._hosts.check(host)
                    read = functools.partial(self._read_image, ticket=ticket)
                    sent = time.monotonic()
                    try:
                        body = await self._with_deadline(self._options.timeout, self._follow(first, read))
                    finally:
                        self._hosts.answered(host, time.monotonic() - sent)
                    ticket.keep(len(body.data))
            except HostRefused as refusal:
                raise FetchError(str(refusal)) from None
            except AddressRefused as error:
                raise FetchError(str(error)) from None
            except FetchError as error:
                if error.throttled:
                    self._hosts.throttled(host, error.retry_after)
                elif error.host_failure:
                    self._hosts.failed(host, str(error))
                if (
                    error.throttled
                    and error.retry_after is not None
                    and error.retry_after <= MAX_RETRY_AFTER_S
                    and comebacks_left > 0
                ):
                    comebacks_left -= 1  # the wait happens in the host's turn (not_before)
                    continue
                if not error.transient or retries_left == 0:
                    raise
                retries_left -= 1
                if not error.throttled:  # a throttled host's wait happens in its turn
                    await asyncio.sleep(min(0.5 * 2**attempt, 8.0) * (0.5 + random.random()))
                continue
            self._hosts.succeeded(host)
            return body
        raise AssertionError("unreachable")

    async def _with_deadline(self, seconds: float, work: Awaitable[T]) -> T:
        """Run ``work`` under a total deadline, turning client errors into FetchError."""
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError:
            raise FetchError(
                f"timed out after {seconds:g}s (total deadline)", transient=True, host_failure=True
            ) from None
        except AddressRefused as error:
            raise FetchError(str(error)) from None
        except aiohttp.ClientConnectorError as error:
            cause = error.os_error
            if isinstance(cause, AddressRefused):
                raise FetchError(str(cause)) from None
            raise FetchError(
                f"connection failed: {cause.strerror or cause}", transient=True, host_failure=True
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
            raise FetchError(f"connection closed early: {error}", transient=True, host_failure=True) from None
        except aiohttp.InvalidURL as error:
            raise FetchError(f"invalid URL: {error}") from None
        except aiohttp.ClientError as error:
            raise FetchError(f"{type(error).__name__}: {error}", transient=True) from None
        except ValueError as error:  # yarl/aiohttp reject some malformed URLs this way
            raise FetchError(f"invalid URL: {error}") from None

    async def _follow(
        self,
        first: URL,
        read: Callable[[aiohttp.ClientResponse, URL], Awaitable[T]],
        max_redirects: int | None = None,
        check_robots: bool = True,
    ) -> T:
        """GET ``first`` (already checked), following redirects by hand: each hop is checked too."""
        assert self._session is not None
        options = self._options
        limit = options.max_redirects if max_redirects is None else max_redirects
        current = first
        seen: set[str] = set()
        for hop in range(limit + 1):
            if hop:
                current = _checked_url(current, options.allow_private_addresses)
                if check_robots and self._policy_paths:
                    await self._check_policies(current)
            seen.add(str(current))
            async with self._session.get(current, allow_redirects=False) as response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"HTTP Error {response.status}: redirect without Location")
                    following = current.join(URL(location))
                    if str(following) in seen:
                        raise FetchError(f"redirect loop at {following}")
                    current = following
                    continue
                return await read(response, current)
        raise FetchError(f"too many redirects (more than {limit})")

    async def _read_image(
        self, response: aiohttp.ClientResponse, url: URL, ticket: BodyTicket | None = None
    ) -> FetchedBody:
        if response.status >= 400:
            throttled = response.status in (429, 503)
            raise FetchError(
                f"HTTP Error {response.status}: {response.reason}",
                transient=response.status in TRANSIENT_STATUSES,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                throttled=throttled,
                host_failure=response.status >= 500 and not throttled,
            )
        directive = disallowing_directive(
            response.headers.getall("X-Robots-Tag", []), self._product_tokens, self._disallowed
        )
        if directive:
            raise FetchError(
                f"Use of image disallowed by X-Robots-Tag directive ({directive})", opt_out="x-robots-tag"
            )
        verdict = header_verdict(_origin(url), response.headers, self._options)
        if verdict is not None:
            raise _refused(verdict)
        data = await self._read_capped(response, self._options.max_body_bytes, ticket=ticket)
        return FetchedBody(data, response.headers.get("Content-Type", ""), str(url))

    async def _check_policies(self, url: URL) -> None:
        """Refuse ``url`` if its origin's policy files say so (or could not be read)."""
        origin = _origin(url)
        futures = self._policy_files(origin)
        for future in futures.values():
            if not future.done():
                # shield: one request's deadline must not cancel the fetch that others wait for
                await asyncio.shield(future)
        files = {path: future.result() for path, future in futures.items()}
        verdict = judge(origin, url.raw_path_qs or "/", files, self._options)
        if verdict is not None:
            raise _refused(verdict)

    def _policy_files(self, origin: str) -> dict[str, asyncio.Future[PolicyFile]]:
        """Each policy file of ``origin``: cached, or asked now (the missing ones in one go)."""
        futures: dict[str, asyncio.Future[PolicyFile]] = {}
        missing: list[tuple[str, asyncio.Future[PolicyFile]]] = []
        for path in self._policy_paths:
            loaded = self._policies.get((origin, path))
            if loaded is None or _expired(loaded):
                future: asyncio.Future[PolicyFile] = asyncio.get_running_loop().create_future()
                loaded = self._policies[(origin, path)] = (time.monotonic(), future)
                missing.append((path, future))
            futures[path] = loaded[1]
        if missing:
            loader = asyncio.ensure_future(self._load_policies(origin, missing))
            self._policy_loaders.add(loader)
            loader.add_done_callback(self._policy_loaders.discard)
        return futures

    async def _load_policies(self, origin: str, files: list[tuple[str, asyncio.Future[PolicyFile]]]) -> None:
        """Ask an origin's policy files one after the other, in one place of the policy window.

        Why in sequence: they then share one kept-alive connection (and the origin's first image
        request takes it over), where asking them at once opened one connection each. A long
        tail's origins mostly hold one image, so that was three connections per image.
        Why one place for all: a long tail starts thousands of origins at once, and so many DNS
        lookups and connections in one burst are a flood, not a crawl (no host turn: the origin's
        image rows all wait for these requests anyway). An origin that cannot be reached is not
        asked again for the next file.
        Why a window of their own (``thread_count`` places, at most ``MAX_POLICY_LOADS``,
        beside the images'): in the images' window, the first thousands of rows of a long tail
        queued a policy load each ahead of every image, and for the run's first seconds the
        cores waited for chains of three small answers. Each place holds one capped file at a
        time, so the window needs no byte budget of its own.
        """
        pending = list(files)
        try:
            async with self._policy_window:
                while pending:
                    path, future = pending[0]
                    loaded = await self._load_policy(origin, path)
                    pending.pop(0)
                    future.set_result(loaded)
                    if isinstance(loaded, Unavailable) and loaded.unreachable:
                        for _, rest in pending:
                            rest.set_result(loaded)
                        pending = []
        except BaseException as error:
            for _, future in pending:
                if not future.done():
                    if isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(error)
            if not isinstance(error, Exception):
                raise

    async def _load_policy(self, origin: str, path: str) -> PolicyFile:
        """Fetch and parse one policy file of an origin; RFC 9309 §2.3.1 decides on failures."""

        async def read(response: aiohttp.ClientResponse, _: URL) -> tuple[int, bytes]:
            data = b""
            if response.status < 400 or (response.content_length or 0) <= MAX_DRAINED_ERROR_BYTES:
                # An error page is read too (when small): a body left unread closes the connection.
                data = await self._read_capped(response, MAX_ROBOTS_BYTES, truncate=True)
            return response.status, data

        seconds = min(self._options.timeout, ROBOTS_TIMEOUT_S)
        try:
            first = _checked_url(f"{origin}{path}", self._options.allow_private_addresses)
            status, data = await self._with_deadline(
                seconds, self._follow(first, read, ROBOTS_MAX_REDIRECTS, check_robots=False)
            )
        except (FetchError, AddressRefused) as error:
            if str(error).startswith("too many redirects"):
                return no_policy(path)  # RFC 9309: may be treated as unavailable (4xx)
            unreachable = isinstance(error, AddressRefused) or error.host_failure
            return Unavailable(str(error), unreachable=unreachable)
        if status == 429 or status >= 500:
            return Unavailable(f"HTTP {status}")
        if status >= 400:
            return no_policy(path)  # no such file: it says nothing
        return parse_policy(path, data, self._product_tokens)

    async def _read_capped(
        self,
        response: aiohttp.ClientResponse,
        cap: int,
        truncate: bool = False,
        ticket: BodyTicket | None = None,
    ) -> bytes:
        """Read the body, never holding more than ``cap`` bytes, whatever Content-Length says.

        With a ``ticket``, the body counts in the window from its headers on: the declared
        length at once, then what arrives beyond it.
        """
        declared = response.content_length
        if declared is not None and declared > cap and not truncate:
            raise FetchError(f"body too large: Content-Length {declared} exceeds max_body_bytes {cap}")
        if ticket is not None and declared is not None:
            ticket.cover(declared)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if ticket is not None:
                ticket.cover(min(size, cap))
            if size > cap:
                if truncate:
                    chunks.append(chunk[: cap - (size - len(chunk))])
                    break
                raise FetchError(f"body too large: more than max_body_bytes {cap} bytes")
            chunks.append(chunk)
        # Content-Length counts the bytes on the wire; with a Content-Encoding those are the
        # compressed ones, and aiohttp already fails a short wire body (connection closed early).
        if declared is not None and size < declared and not truncate and not _content_encoded(response):
            raise FetchError(f"truncated body: got {size} of {declared} bytes", transient=True)
        return b"".join(chunks)


def _content_encoded(response: aiohttp.ClientResponse) -> bool:
    """Whether the body went over the wire in another encoding than the one we read."""
    return response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def _checked_url(url: str | URL, allow_private: bool) -> URL:
    """The URL to request, or FetchError/AddressRefused if it must not be requested at all."""
    try:
        parsed = url if isinstance(url, URL) else URL(url, encoded=False) if url else URL()
    except ValueError as error:
        raise FetchError(f"invalid URL: {error}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r}: only http and https are fetched")
    wire_host = _wire_host(parsed)
    if not wire_host:
        raise FetchError("invalid URL: no host")
    host = check_host(wire_host, allow_private)
    # A numeric spelling (2130706433, 0x7f.1) is requested as the dotted quad it was judged as,
    # so what is contacted never depends on how a resolver folds it.
    return parsed if host == wire_host else parsed.with_host(host)


def _wire_host(url: URL) -> str | None:
    """The host as it is resolved and contacted: a name IDNA-encoded (``xn--…``), an IP as is.

    Why not ``URL.host``: it decodes every name with the pure-Python idna package (35 µs a
    name) behind a cache of 256 names, which a long tail of hosts misses on most rows.
    """
    raw = url.raw_host
    if not raw or raw[-1].isdigit() or ":" in raw:
        return url.host  # an IP literal: yarl returns it undecoded, zone included
    return raw


def _refused(verdict: Verdict) -> FetchError:
    return FetchError(verdict.message, opt_out=verdict.opt_out)


def _expired(loaded: tuple[float, asyncio.Future[PolicyFile]]) -> bool:
    """An unavailable policy file is asked again after a while; a fetched one lasts the run."""
    when, future = loaded
    if not future.done() or future.cancelled() or future.exception() is not None:
        return future.done()
    return isinstance(future.result(), Unavailable) and time.monotonic() - when > ROBOTS_RETRY_S


def _origin(url: str | URL) -> str:
    """scheme://host:port, the unit of policy files and of per-host politeness."""
    parsed = url if isinstance(url, URL) else URL(url, encoded=False) if url else URL()
    host = _wire_host(parsed)
    if not host:
        return str(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}"
