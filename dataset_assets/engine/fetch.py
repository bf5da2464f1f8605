"""HTTP fetching for one worker process: one aiohttp session, a total deadline per request.

Why not urllib threads like img2dataset: its timeout is per socket operation (a trickling
server never times out), it opens a new connection per image and resolves DNS every time.
Here one event loop per process keeps connections alive, caches DNS, bounds every request by
a wall-clock deadline, caps the body while streaming it, and follows redirects by hand so each
hop is re-checked (scheme, address, loop).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from yarl import URL

from dataset_assets import __version__
from dataset_assets.engine.addresses import AddressRefused, SafeResolver, check_host
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.politeness import HostPoliteness, HostRefused
from dataset_assets.engine.robots import MAX_ROBOTS_BYTES, RobotsRules, parse_robots

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Status codes worth retrying: the same request may succeed later. 404/403/410 never do.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
READ_CHUNK = 64 * 1024
ROBOTS_TIMEOUT_S = 10.0
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2
PRODUCT_TOKEN = "dataset-assets"

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
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        throttled: bool = False,
        host_failure: bool = False,
    ) -> None:
        super().__init__(message)
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


class Fetcher:
    """Downloads URLs within one event loop; create and use it inside a worker process."""

    def __init__(self, options: DownloadOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self._disallowed = tuple(d.lower() for d in options.disallowed_header_directives)
        self._hosts = HostPoliteness(options.requests_per_second_per_host, options.host_failure_limit)
        self._robots: dict[str, asyncio.Future[RobotsRules]] = {}
        tokens = (options.user_agent_token, PRODUCT_TOKEN) if options.user_agent_token else (PRODUCT_TOKEN,)
        self._product_tokens = tuple(t.lower() for t in tokens)

    async def __aenter__(self) -> Fetcher:
        options = self._options
        connector = aiohttp.TCPConnector(
            limit=options.thread_count,
            limit_per_host=options.max_connections_per_host,
            ttl_dns_cache=300,
            use_dns_cache=True,
            resolver=SafeResolver(options.allow_private_addresses),
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": user_agent(options.user_agent_token), "Accept": "image/*,*/*;q=0.5"},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> FetchedBody:
        """Fetch with retries on transient failures only, minding the host's backoff window."""
        host = _origin(url)
        attempts = self._options.retries + 1
        for attempt in range(attempts):
            try:
                await self._hosts.wait_turn(host)
            except HostRefused as refusal:
                raise FetchError(str(refusal)) from None
            try:
                body = await self._with_deadline(self._options.timeout, self._follow(url, self._read_image))
            except FetchError as error:
                if error.throttled:
                    self._hosts.throttled(host, error.retry_after)
                elif error.host_failure:
                    self._hosts.failed(host, str(error))
                if not error.transient or attempt == attempts - 1:
                    raise
                if not error.throttled:  # a throttled host's wait happens in wait_turn
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
        url: str,
        read: Callable[[aiohttp.ClientResponse, URL], Awaitable[T]],
        max_redirects: int | None = None,
        check_robots: bool = True,
    ) -> T:
        """GET ``url``, following redirects by hand: every hop is checked like the first."""
        assert self._session is not None
        options = self._options
        limit = options.max_redirects if max_redirects is None else max_redirects
        current = URL(url, encoded=False) if url else URL()
        seen: set[str] = set()
        for _hop in range(limit + 1):
            if current.scheme not in ("http", "https"):
                raise FetchError(
                    f"unsupported URL scheme {current.scheme!r}: only http and https are fetched"
                )
            if not current.host:
                raise FetchError("invalid URL: no host")
            check_host(current.host, options.allow_private_addresses)
            if check_robots and options.respect_robots_txt:
                await self._check_robots(current)
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

    async def _read_image(self, response: aiohttp.ClientResponse, url: URL) -> FetchedBody:
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
            raise FetchError(f"Use of image disallowed by X-Robots-Tag directive ({directive})")
        data = await self._read_capped(response, self._options.max_body_bytes)
        return FetchedBody(data, response.headers.get("Content-Type", ""), str(url))

    async def _check_robots(self, url: URL) -> None:
        origin = _origin(url)
        future = self._robots.get(origin)
        if future is None:
            future = self._robots[origin] = asyncio.ensure_future(self._load_robots(origin))
        # shield: one request's deadline must not cancel the fetch that others wait for
        rules = future.result() if future.done() else await asyncio.shield(future)
        path = url.raw_path_qs or "/"
        rule = rules.blocking_rule(path)
        if rule is not None:
            raise FetchError(f"disallowed by robots.txt of {origin} ({rule})")

    async def _load_robots(self, origin: str) -> RobotsRules:
        """Fetch and parse an origin's robots.txt once; RFC 9309 §2.3.1 decides on failures."""

        async def read(response: aiohttp.ClientResponse, _: URL) -> tuple[int, bytes]:
            if response.status >= 400:
                return response.status, b""
            return response.status, await self._read_capped(response, MAX_ROBOTS_BYTES, truncate=True)

        seconds = min(self._options.timeout, ROBOTS_TIMEOUT_S)
        try:
            status, data = await self._with_deadline(
                seconds, self._follow(f"{origin}/robots.txt", read, ROBOTS_MAX_REDIRECTS, check_robots=False)
            )
        except FetchError as error:
            if str(error).startswith("too many redirects"):
                return RobotsRules()  # RFC: may be treated as unavailable (4xx)
            return RobotsRules(disallow_all_reason=f"robots.txt unreachable: {error}")
        if status == 429 or status >= 500:
            return RobotsRules(disallow_all_reason=f"robots.txt answered HTTP {status}")
        if status >= 400:
            return RobotsRules()  # no robots.txt: everything allowed
        return parse_robots(data.decode("utf-8", errors="replace"), self._product_tokens)

    async def _read_capped(self, response: aiohttp.ClientResponse, cap: int, truncate: bool = False) -> bytes:
        """Read the body, never holding more than ``cap`` bytes, whatever Content-Length says."""
        declared = response.content_length
        if declared is not None and declared > cap and not truncate:
            raise FetchError(f"body too large: Content-Length {declared} exceeds max_body_bytes {cap}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > cap:
                if truncate:
                    chunks.append(chunk[: cap - (size - len(chunk))])
                    break
                raise FetchError(f"body too large: more than max_body_bytes {cap} bytes")
            chunks.append(chunk)
        if declared is not None and size < declared and not truncate:
            raise FetchError(f"truncated body: got {size} of {declared} bytes", transient=True)
        return b"".join(chunks)


def _origin(url: str | URL) -> str:
    """scheme://host:port, the unit of robots.txt and of per-host politeness."""
    parsed = url if isinstance(url, URL) else URL(url, encoded=False) if url else URL()
    if not parsed.host:
        return str(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"
