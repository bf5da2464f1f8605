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
from dataclasses import dataclass

import aiohttp
from yarl import URL

from dataset_assets import __version__
from dataset_assets.engine.addresses import AddressRefused, SafeResolver, check_host
from dataset_assets.engine.options import DownloadOptions

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Status codes worth retrying: the same request may succeed later. 404/403/410 never do.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
READ_CHUNK = 64 * 1024

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
    """A failed download; ``str(exc)`` is the row's error_message."""

    def __init__(self, message: str, *, transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


@dataclass(slots=True)
class FetchedBody:
    data: bytes
    content_type: str
    final_url: str


def user_agent(token: str | None) -> str:
    """A UA that names the project (and the user's token), so site owners can identify us."""
    suffix = f"; {token.lower()}" if token else ""
    return f"Mozilla/5.0 (compatible; dataset-assets/{__version__}{suffix}; image dataset builder)"


def looks_like_image(data: bytes) -> bool:
    if data.startswith(IMAGE_MAGIC):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def disallowing_directive(
    header_values: list[str], token: str | None, disallowed: tuple[str, ...]
) -> str | None:
    """The first X-Robots-Tag directive that forbids our use of the image, if any.

    A value is ``[user-agent:] directive, directive``; it applies when it names no user agent
    or names ours. ``unavailable_after: <date>`` is a directive, not a user agent.
    """
    if not disallowed:
        return None
    our_token = token.lower() if token else None
    for value in header_values:
        agent, sep, rest = value.partition(":")
        agent = agent.strip().lower()
        if sep and agent != "unavailable_after" and " " not in agent:
            if agent != our_token:
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
        """Fetch with retries on transient failures only, backing off between attempts."""
        attempts = self._options.retries + 1
        for attempt in range(attempts):
            try:
                return await self._fetch_once(url)
            except FetchError as error:
                if not error.transient or attempt == attempts - 1:
                    raise
                delay = error.retry_after
                if delay is None:
                    delay = min(0.5 * 2**attempt, 8.0) * (0.5 + random.random())
                await asyncio.sleep(min(delay, MAX_RETRY_AFTER_S))
        raise AssertionError("unreachable")

    async def _fetch_once(self, url: str) -> FetchedBody:
        try:
            async with asyncio.timeout(self._options.timeout):
                return await self._follow(url)
        except TimeoutError:
            raise FetchError(
                f"timed out after {self._options.timeout:g}s (total deadline)", transient=True
            ) from None
        except AddressRefused as error:
            raise FetchError(str(error)) from None
        except aiohttp.ClientConnectorError as error:
            cause = error.os_error
            if isinstance(cause, AddressRefused):
                raise FetchError(str(cause)) from None
            raise FetchError(f"connection failed: {cause.strerror or cause}", transient=True) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
            raise FetchError(f"connection closed early: {error}", transient=True) from None
        except aiohttp.InvalidURL as error:
            raise FetchError(f"invalid URL: {error}") from None
        except aiohttp.ClientError as error:
            raise FetchError(f"{type(error).__name__}: {error}", transient=True) from None
        except ValueError as error:  # yarl/aiohttp reject some malformed URLs this way
            raise FetchError(f"invalid URL: {error}") from None

    async def _follow(self, url: str) -> FetchedBody:
        assert self._session is not None
        options = self._options
        current = URL(url, encoded=False) if url else URL()
        seen: set[str] = set()
        for _hop in range(options.max_redirects + 1):
            if current.scheme not in ("http", "https"):
                raise FetchError(
                    f"unsupported URL scheme {current.scheme!r}: only http and https are fetched"
                )
            if not current.host:
                raise FetchError("invalid URL: no host")
            check_host(current.host, options.allow_private_addresses)
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
                if response.status >= 400:
                    raise FetchError(
                        f"HTTP Error {response.status}: {response.reason}",
                        transient=response.status in TRANSIENT_STATUSES,
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                directive = disallowing_directive(
                    response.headers.getall("X-Robots-Tag", []), options.user_agent_token, self._disallowed
                )
                if directive:
                    raise FetchError(f"Use of image disallowed by X-Robots-Tag directive ({directive})")
                data = await self._read_capped(response)
                return FetchedBody(data, response.headers.get("Content-Type", ""), str(current))
        raise FetchError(f"too many redirects (more than {options.max_redirects})")

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._options.max_body_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            raise FetchError(f"body too large: Content-Length {declared} exceeds max_body_bytes {cap}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > cap:
                raise FetchError(f"body too large: more than max_body_bytes {cap} bytes")
            chunks.append(chunk)
        if declared is not None and size < declared:
            raise FetchError(f"truncated body: got {size} of {declared} bytes", transient=True)
        return b"".join(chunks)
