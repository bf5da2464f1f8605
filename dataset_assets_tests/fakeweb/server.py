"""A loopback-only image web server that misbehaves on purpose.

Tests, the benchmark and the README demo need a web that is reproducible and offline but still
exercises the downloader's failure paths: slow hosts, trickling and truncated bodies, redirect
chains and loops, error statuses, robots opt-outs. It also records what clients did to it
(per-host concurrency, user agents, paths) so tests can assert politeness from the server's side,
which is the only side that matters to a real site operator.

Two hard guarantees, because a stray server must never outlive the process that wanted it or
talk to anything but this machine:

* it binds loopback addresses only (``127.0.0.0/8``; the config refuses anything else);
* it stops by itself after ``max_lifetime_s``, and the subprocess variant also exits as soon as
  its stdin closes, which happens when the parent dies.

Routes (``{name}`` is one path segment, percent-decoded):

``/img/{name}``                    the image, Content-Type from its extension, Content-Length set
``/status/{code}``                 that status with a small HTML body (200..599)
``/reason/{code}/{phrase}``        that status with ``{phrase}`` as its reason phrase
``/robots.txt``                    configurable text (per listening address too), allow-all by default
``/.well-known/tdmrep.json``       configurable like robots.txt (W3C TDMRep); 404 until set
``/ai.txt``                        configurable like robots.txt (Spawning ai.txt); 404 until set
``/html``                          a 200 ``text/html`` page (a "URL that is not an image")
``/slow/{seconds}/{name}``         sleep (capped at 30 s), then the image
``/trickle/{name}``                the full Content-Length, but one byte every 0.5 s
``/redirect/{n}/{name}``           ``n`` 302 hops, then the image
``/redirect-loop``                 302 to itself forever
``/robots-tag/{directive}/{name}`` the image with ``X-Robots-Tag: {directive}``
``/header/{field}/{value}/{name}`` the image with ``{field}: {value}`` (e.g. ``Content-Usage``,
                                   ``tdm-reservation``)
``/truncated/{name}``              full Content-Length declared, half the body sent, then closed
``/hostile/{kind}/{name}``         one misbehaviour per ``kind``, e.g. ``gzip`` (the image sent
                                   with ``Content-Encoding: gzip``, larger than the image itself)
``/_stats``                        JSON snapshot of :class:`ServerStats` (not itself recorded)

The configured latency is added to every recorded request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fnmatch
import gzip
import ipaddress
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from aiohttp import web

log = logging.getLogger(__name__)

DEFAULT_ROBOTS_TXT = "User-agent: *\nDisallow:\n"
# The per-origin policy files a crawler reads; each can be set per listening address.
POLICY_PATHS = ("/robots.txt", "/.well-known/tdmrep.json", "/ai.txt")
MAX_SLOW_S = 30.0
MAX_REDIRECT_HOPS = 100
STATS_PATH = "/_stats"

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
    ".html": "text/html",
}

_HTML_PAGE = """<!doctype html>
<html><head><title>Not an image</title></head>
<body><h1>This is a web page</h1><p>Image downloaders should reject this URL.</p>
<img src="/img/000000.jpg" alt="a picture"></body></html>
"""


MAX_ENDLESS_CHUNKS = 1024  # 64 MiB: more than any body cap, less than forever


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


@dataclass
class ServerConfig:
    """How the server behaves; validated eagerly so a bad config fails in the caller's thread."""

    latency_s: tuple[float, float] = (0.0, 0.0)
    """Uniform random delay added before every response (simulates a distant host)."""
    max_lifetime_s: float = 600.0
    """Watchdog: the server stops after this long no matter what the caller does."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free ephemeral port."""
    extra_hosts: int = 0
    """Also listen on the next N loopback addresses (127.0.0.2, ...) with the same port, so
    tests can exercise per-host politeness with distinct hostnames that all reach this server."""
    robots_txt: str = DEFAULT_ROBOTS_TXT
    trickle_interval_s: float = 0.5
    max_recorded_paths: int = 10_000
    seed: int | None = None
    """Seed for the latency draws; None for a fresh random sequence."""

    def __post_init__(self) -> None:
        lo, hi = (float(x) for x in self.latency_s)
        if not (0.0 <= lo <= hi and math.isfinite(hi)):
            raise ValueError(f"latency_s must be 0 <= low <= high, got {self.latency_s!r}")
        self.latency_s = (lo, hi)
        if not (self.max_lifetime_s > 0 and math.isfinite(self.max_lifetime_s)):
            raise ValueError("max_lifetime_s must be a positive, finite number of seconds")
        if self.extra_hosts < 0 or not 0 <= self.port <= 65535:
            raise ValueError("extra_hosts must be >= 0 and port in 0..65535")
        for h in self.hosts:
            ip = ipaddress.ip_address(h)
            if ip.version != 4 or not ip.is_loopback:
                raise ValueError(f"refusing to bind {h}: only IPv4 loopback (127.0.0.0/8) is allowed")
        if self.trickle_interval_s <= 0:
            raise ValueError("trickle_interval_s must be positive")

    @property
    def hosts(self) -> list[str]:
        """All addresses the server listens on: ``host`` then ``extra_hosts`` consecutive ones."""
        base = ipaddress.IPv4Address(self.host)
        return [str(base + i) for i in range(self.extra_hosts + 1)]


@dataclass
class HostStats:
    """Counters for one listening address, i.e. one "site" from the client's point of view."""

    connections: int = 0
    """TCP connections open right now."""
    peak_connections: int = 0
    total_connections: int = 0
    in_flight: int = 0
    """Requests being handled right now (latency included)."""
    peak_in_flight: int = 0
    requests: int = 0


@dataclass
class ServerStats:
    total_requests: int = 0
    hosts: dict[str, HostStats] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    """Most recent request paths (with query), oldest first; bounded by max_recorded_paths."""
    user_agents: dict[str, int] = field(default_factory=dict)
    first_seen: dict[str, list[float]] = field(default_factory=dict)
    """Monotonic times of the requests to each /hostile/ path (to check backoff windows)."""
    name_peak_connections: dict[str, int] = field(default_factory=dict)
    """The most connections open at once whose first request named each Host (as sent, port
    included). Many names can share one listening address, as sites share a CDN's address:
    this is what each of those sites saw, where :attr:`hosts` counts per address."""

    def host(self, host: str = "127.0.0.1") -> HostStats:
        """Counters for ``host``; zeros if it never saw a connection."""
        return self.hosts.get(host, HostStats())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerStats:
        return cls(
            total_requests=int(data["total_requests"]),
            hosts={h: HostStats(**v) for h, v in data["hosts"].items()},
            paths=list(data["paths"]),
            user_agents=dict(data["user_agents"]),
            first_seen={k: list(v) for k, v in data.get("first_seen", {}).items()},
            name_peak_connections=dict(data.get("name_peak_connections", {})),
        )


class _Recorder:
    """Counters mutated on the server loop and read from other threads, hence the lock."""

    def __init__(self, max_paths: int) -> None:
        self._lock = threading.Lock()
        self._max_paths = max_paths
        self.reset()

    def reset(self) -> None:
        with self._lock:
            old = getattr(self, "_hosts", {})
            # Keep what is open now so the in-progress counters stay consistent after a reset.
            self._hosts = {
                h: HostStats(
                    connections=s.connections,
                    peak_connections=s.connections,
                    in_flight=s.in_flight,
                    peak_in_flight=s.in_flight,
                )
                for h, s in old.items()
            }
            self._total = 0
            self._paths: collections.deque[str] = collections.deque(maxlen=self._max_paths)
            self._agents: collections.Counter[str] = collections.Counter()
            self._times: dict[str, list[float]] = {}
            self._names_open: collections.Counter[str] = collections.Counter(
                {n: c for n, c in getattr(self, "_names_open", {}).items() if c > 0}
            )
            self._names_peak: dict[str, int] = dict(self._names_open)

    def _host(self, host: str) -> HostStats:
        s = self._hosts.get(host)
        if s is None:
            s = self._hosts[host] = HostStats()
        return s

    def connection_opened(self, host: str) -> None:
        with self._lock:
            s = self._host(host)
            s.connections += 1
            s.total_connections += 1
            s.peak_connections = max(s.peak_connections, s.connections)

    def connection_closed(self, host: str) -> None:
        with self._lock:
            s = self._host(host)
            s.connections = max(0, s.connections - 1)

    def name_connection_opened(self, name: str) -> None:
        with self._lock:
            self._names_open[name] += 1
            self._names_peak[name] = max(self._names_peak.get(name, 0), self._names_open[name])

    def name_connection_closed(self, name: str) -> None:
        with self._lock:
            self._names_open[name] = max(0, self._names_open[name] - 1)

    def request_started(self, host: str, path: str, user_agent: str) -> None:
        with self._lock:
            s = self._host(host)
            s.requests += 1
            s.in_flight += 1
            s.peak_in_flight = max(s.peak_in_flight, s.in_flight)
            self._total += 1
            self._paths.append(path)
            self._agents[user_agent] += 1
            if path.startswith("/hostile/") and len(self._times) < self._max_paths:
                self._times.setdefault(path, []).append(time.monotonic())

    def request_finished(self, host: str) -> None:
        with self._lock:
            s = self._host(host)
            s.in_flight = max(0, s.in_flight - 1)

    def snapshot(self) -> ServerStats:
        with self._lock:
            return ServerStats(
                total_requests=self._total,
                hosts={h: dataclasses.replace(s) for h, s in self._hosts.items()},
                paths=list(self._paths),
                user_agents=dict(self._agents),
                first_seen={k: list(v) for k, v in self._times.items()},
                name_peak_connections=dict(self._names_peak),
            )


def _local_host(transport: asyncio.BaseTransport | None) -> str:
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[0]) if sockname else "?"


class _UrlMixin:
    """URL building shared by the in-thread and the subprocess server."""

    _port: int | None
    _hosts: list[str]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not started")
        return self._port

    @property
    def hosts(self) -> list[str]:
        """Loopback addresses the server listens on (all on :attr:`port`)."""
        return list(self._hosts)

    @property
    def base_url(self) -> str:
        return f"http://{self._hosts[0]}:{self.port}"

    def url_for(self, path: str, host: str | None = None) -> str:
        """Absolute URL of an arbitrary route, e.g. ``url_for("/status/404")``."""
        host = self._hosts[0] if host is None else host
        if host not in self._hosts:
            raise ValueError(f"{host} is not served here; listening on {self._hosts}")
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        """URL of image ``name`` as served via ``host`` (one of :attr:`hosts`)."""
        return self.url_for(f"/img/{quote(name, safe='')}", host)


class ImageServer(_UrlMixin):
    """Runs an aiohttp server in a background thread with its own event loop.

    A thread (rather than the caller's loop) makes it usable unchanged from sync pytest code, a
    CLI demo and a benchmark, and lets the client under test own its event loop. Images come from
    ``images`` (in memory, looked up first) and/or files directly inside ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        images: Mapping[str, bytes] | None = None,
        config: ServerConfig | None = None,
    ) -> None:
        self.config = config if config is not None else ServerConfig()
        self._root = Path(root) if root is not None else None
        self._images: dict[str, bytes] = dict(images or {})
        self._header_rules: list[tuple[str, dict[str, str]]] = []
        # (listening address or None for all, path) -> (body, status)
        self._policy_files: dict[tuple[str | None, str], tuple[str, int]] = {
            (None, "/robots.txt"): (self.config.robots_txt, 200)
        }
        self._rules_lock = threading.Lock()
        self._recorder = _Recorder(self.config.max_recorded_paths)
        self._rng = random.Random(self.config.seed)
        self._hosts = self.config.hosts
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self._conn_hosts: dict[object, str] = {}
        self._conn_names: dict[object, str] = {}  # connection -> Host its first request named
        self.stopped_by_watchdog = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> ImageServer:
        if self._thread is not None or self._stop_requested:
            raise RuntimeError("an ImageServer can only be started once")
        self._thread = threading.Thread(target=self._thread_main, name="ImageServer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"image server did not start within {timeout_s} s")
        if self._start_error is not None:
            self._thread.join(timeout_s)
            raise RuntimeError("image server failed to start") from self._start_error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, cut open connections and join the thread. Safe to call repeatedly."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing left to stop
                loop.call_soon_threadsafe(event.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("image server thread still alive %.1f s after stop()", timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server has stopped (by stop() or the watchdog); False on timeout."""
        return self._stopped.wait(timeout_s)

    @property
    def running(self) -> bool:
        return self._ready.is_set() and not self._stopped.is_set() and self._start_error is None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration and inspection ----------------------------------------------------------

    def add_image(self, name: str, data: bytes) -> None:
        with self._rules_lock:
            self._images[name] = data

    def set_header(self, name_pattern: str, headers: Mapping[str, str]) -> None:
        """Add ``headers`` to every image response whose name matches the fnmatch pattern.

        Lets a test mark a subset of a corpus (e.g. ``X-Robots-Tag: noai``) without new routes.
        Later rules override earlier ones for the same header.
        """
        for k, v in headers.items():
            if any(c in str(k) + str(v) for c in "\r\n"):
                raise ValueError("header names and values must not contain line breaks")
        with self._rules_lock:
            self._header_rules.append((name_pattern, {str(k): str(v) for k, v in headers.items()}))

    def set_robots_txt(self, text: str, status: int = 200, host: str | None = None) -> None:
        """Serve ``text`` as /robots.txt with ``status`` (e.g. 404: none; 503: unavailable)."""
        self.set_policy_file("/robots.txt", text, status, host)

    def set_policy_file(self, path: str, text: str, status: int = 200, host: str | None = None) -> None:
        """Serve ``text`` at ``path`` (one of :data:`POLICY_PATHS`) with ``status``.

        ``host`` (one of :attr:`hosts`) sets it for that address only, so each loopback address
        can play a site with its own policy; ``None`` sets it for the addresses without one.
        """
        if path not in POLICY_PATHS:
            raise ValueError(f"{path!r} is not a policy file; one of {POLICY_PATHS}")
        if host is not None and host not in self._hosts:
            raise ValueError(f"{host} is not served here; listening on {self._hosts}")
        with self._rules_lock:
            self._policy_files[(host, path)] = (text, status)

    @property
    def stats(self) -> ServerStats:
        """A consistent copy; the live counters keep moving."""
        return self._recorder.snapshot()

    def reset_stats(self) -> None:
        self._recorder.reset()

    # -- server thread ------------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.exception("image server crashed")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()
            self._ready.set()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        # A short shutdown timeout keeps stop() prompt even with /trickle or /slow requests open;
        # handler_cancellation frees handlers whose client went away.
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.2, handler_cancellation=True, access_log=None
        )
        await runner.setup()
        try:
            self._hook_connections(runner)
            socks = self._bind_sockets()
            for sock in socks:
                await web.SockSite(runner, sock).start()
            self._port = socks[0].getsockname()[1]
            self._ready.set()
            if not self._stop_requested:
                try:
                    await asyncio.wait_for(self._stop_event.wait(), timeout=self.config.max_lifetime_s)
                except TimeoutError:
                    self.stopped_by_watchdog = True
                    log.warning(
                        "image server reached its max lifetime (%s s); stopping", self.config.max_lifetime_s
                    )
        finally:
            await runner.cleanup()

    def _bind_sockets(self) -> list[socket.socket]:
        """Bind every host on one port, retrying ephemeral ports taken on some other address."""
        attempts = 1 if self.config.port else 20
        for attempt in range(attempts):
            socks: list[socket.socket] = []
            try:
                port = self.config.port
                for host in self._hosts:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((host, port))
                    port = sock.getsockname()[1]
                return socks
            except OSError:
                for sock in socks:
                    sock.close()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _hook_connections(self, runner: web.AppRunner) -> None:
        """Count TCP connections per listening address.

        aiohttp has no public connection callbacks, so wrap the low-level Server's
        connection_made/connection_lost, which every RequestHandler reports to.
        """
        server = runner.server
        if server is None or not hasattr(server, "connection_made"):
            log.warning("aiohttp Server has no connection hooks; connection counters stay at 0")
            return
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            host = _local_host(transport)
            self._conn_hosts[handler] = host
            self._recorder.connection_opened(host)
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            host = self._conn_hosts.pop(handler, None)
            if host is not None:
                self._recorder.connection_closed(host)
            name = self._conn_names.pop(handler, None)
            if name is not None:
                self._recorder.name_connection_closed(name)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    # -- request handling ---------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return await handler(request)
        host = _local_host(request.transport)
        handler_of_connection = request.protocol
        if handler_of_connection in self._conn_hosts and handler_of_connection not in self._conn_names:
            name = self._conn_names[handler_of_connection] = request.host
            self._recorder.name_connection_opened(name)
        self._recorder.request_started(host, request.path_qs, request.headers.get("User-Agent", ""))
        try:
            lo, hi = self.config.latency_s
            if hi > 0:
                await asyncio.sleep(self._rng.uniform(lo, hi))
            return await handler(request)
        finally:
            self._recorder.request_finished(host)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/img/{name}", self._img)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/reason/{code}/{phrase}", self._reason)
        for path in POLICY_PATHS:
            app.router.add_get(path, self._policy_file)
        app.router.add_get("/html", self._html)
        app.router.add_get("/slow/{seconds}/{name}", self._slow)
        app.router.add_get("/trickle/{name}", self._trickle)
        app.router.add_get("/redirect/{n}/{name}", self._redirect)
        app.router.add_get("/redirect-loop", self._redirect_loop)
        app.router.add_get("/robots-tag/{directive}/{name}", self._robots_tag)
        app.router.add_get("/header/{field}/{value}/{name}", self._with_header)
        app.router.add_get("/truncated/{name}", self._truncated)
        app.router.add_get("/hostile/{kind}/{name}", self._hostile)
        app.router.add_get(STATS_PATH, self._stats)

    def _lookup(self, name: str) -> bytes | None:
        with self._rules_lock:
            data = self._images.get(name)
        if data is not None or self._root is None:
            return data
        # One path segment only: never serve anything outside root.
        if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
            return None
        try:
            return (self._root / name).read_bytes()
        except OSError:
            return None

    def _image_headers(self, name: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        with self._rules_lock:
            rules = list(self._header_rules)
        for pattern, extra in rules:
            if fnmatch.fnmatchcase(name, pattern):
                headers.update(extra)
        return headers

    def _image_or_404(self, name: str) -> bytes:
        data = self._lookup(name)
        if data is None:
            raise web.HTTPNotFound(text=f"no image named {name!r}")
        return data

    def _image_response(self, name: str, extra: Mapping[str, str] | None = None) -> web.Response:
        data = self._image_or_404(name)
        headers = self._image_headers(name)
        headers.update(extra or {})
        return web.Response(body=data, content_type=content_type_for(name), headers=headers)

    async def _img(self, request: web.Request) -> web.Response:
        return self._image_response(request.match_info["name"])

    async def _status(self, request: web.Request) -> web.Response:
        try:
            code = int(request.match_info["code"])
        except ValueError:
            raise web.HTTPBadRequest(text="status code must be an integer") from None
        if not 200 <= code <= 599:
            raise web.HTTPBadRequest(text="status code must be in 200..599")
        if code in (204, 304):  # these must not carry a body
            return web.Response(status=code)
        body = f"<!doctype html><html><body><h1>HTTP {code}</h1></body></html>\n"
        return web.Response(status=code, text=body, content_type="text/html")

    async def _reason(self, request: web.Request) -> web.Response:
        """A status with a reason phrase of the caller's choosing (servers send free text there)."""
        code = int(request.match_info["code"])
        return web.Response(status=code, reason=request.match_info["phrase"], text="no")

    async def _policy_file(self, request: web.Request) -> web.Response:
        host, path = _local_host(request.transport), request.path
        with self._rules_lock:
            served = self._policy_files.get((host, path)) or self._policy_files.get((None, path))
        if served is None:
            raise web.HTTPNotFound(text=f"no {path} here")
        text, status = served
        content_type = "application/json" if path.endswith(".json") else "text/plain"
        return web.Response(status=status, text=text, content_type=content_type)

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(text=_HTML_PAGE, content_type="text/html")

    async def _slow(self, request: web.Request) -> web.Response:
        try:
            seconds = float(request.match_info["seconds"])
        except ValueError:
            raise web.HTTPBadRequest(text="seconds must be a number") from None
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise web.HTTPBadRequest(text="seconds must be a non-negative number")
        await asyncio.sleep(min(seconds, MAX_SLOW_S))
        return self._image_response(request.match_info["name"])

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """Honest headers, glacial body: catches clients with only a connect/first-byte timeout."""
        name = request.match_info["name"]
        data = self._image_or_404(name)
        resp = web.StreamResponse(headers=self._image_headers(name))
        resp.content_type = content_type_for(name)
        resp.content_length = len(data)
        await resp.prepare(request)
        # Ends with the server: stop() and the watchdog cancel this handler.
        for i in range(len(data)):
            await resp.write(data[i : i + 1])
            if i + 1 < len(data):
                await asyncio.sleep(self.config.trickle_interval_s)
        await resp.write_eof()
        return resp

    async def _redirect(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            n = int(request.match_info["n"])
        except ValueError:
            raise web.HTTPBadRequest(text="redirect count must be an integer") from None
        if not 0 <= n <= MAX_REDIRECT_HOPS:
            raise web.HTTPBadRequest(text=f"redirect count must be in 0..{MAX_REDIRECT_HOPS}")
        if n == 0:
            return self._image_response(name)
        # Relative Location keeps the client on the same loopback host.
        return web.Response(status=302, headers={"Location": f"/redirect/{n - 1}/{quote(name, safe='')}"})

    async def _hostile(self, request: web.Request) -> web.StreamResponse:
        """Misbehaviours of real web servers, one per ``kind`` (the hostile-input tests use them)."""
        kind, name = request.match_info["kind"], request.match_info["name"]
        if kind.startswith("retry-after-"):  # 429 with Retry-After the first time, then the image
            seen = self._recorder.snapshot().first_seen.get(request.path_qs, [])
            if len(seen) <= 1:
                return web.Response(status=429, headers={"Retry-After": kind.removeprefix("retry-after-")})
            return self._image_response(name)
        if kind == "throttle-forever":
            return web.Response(status=503)
        if kind == "empty":
            return web.Response(body=b"", content_type=content_type_for(name))
        if kind == "wrong-type":
            return web.Response(body=self._image_or_404(name), content_type="text/plain")
        if kind in ("to-file", "to-ftp", "to-data"):
            target = {
                "to-file": "file:///etc/passwd",
                "to-ftp": "ftp://127.0.0.1/image.jpg",
                "to-data": "data:image/png;base64,iVBORw0KGgo=",
            }[kind]
            return web.Response(status=302, headers={"Location": target})
        if kind == "to-metadata":
            return web.Response(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        if kind in ("gzip", "gzip-cut"):
            # Stored (level 0) gzip is larger than the image, so Content-Length (the wire size)
            # differs from the decoded size; gzip-cut sends half of it and hangs up.
            wire = gzip.compress(self._image_or_404(name), compresslevel=0, mtime=0)
            resp = web.StreamResponse(headers={"Content-Encoding": "gzip"})
            resp.content_type = content_type_for(name)
            resp.content_length = len(wire)
            await resp.prepare(request)
            if kind == "gzip":
                await resp.write(wire)
                await resp.write_eof()
                return resp
            await resp.write(wire[: len(wire) // 2])
            if request.transport is not None:
                request.transport.close()
            return resp
        if kind in ("endless", "lying-length"):
            # A body with no end (or far past what Content-Length claims), bounded here anyway.
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            if kind == "lying-length":
                resp.headers["Content-Length"] = "1000"
            await resp.prepare(request)
            chunk = b"\xff" * 65536
            for _ in range(MAX_ENDLESS_CHUNKS):
                try:
                    await resp.write(chunk)
                except (ConnectionResetError, RuntimeError):
                    break
            return resp
        raise web.HTTPBadRequest(text=f"unknown hostile kind {kind!r}")

    async def _redirect_loop(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/redirect-loop"})

    async def _robots_tag(self, request: web.Request) -> web.Response:
        directive = request.match_info["directive"]
        if any(c in directive for c in "\r\n"):
            raise web.HTTPBadRequest(text="directive must not contain line breaks")
        return self._image_response(request.match_info["name"], {"X-Robots-Tag": directive})

    async def _with_header(self, request: web.Request) -> web.Response:
        field, value = request.match_info["field"], request.match_info["value"]
        if not field.replace("-", "").isalnum() or any(c in value for c in "\r\n"):
            raise web.HTTPBadRequest(text="field must be a token and value one line")
        return self._image_response(request.match_info["name"], {field: value})

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        """Promise the whole body, deliver half, hang up: the client must not keep a partial file."""
        name = request.match_info["name"]
        data = self._image_or_404(name)
        resp = web.StreamResponse(headers=self._image_headers(name))
        resp.content_type = content_type_for(name)
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()  # close() flushes what was written, then sends FIN
        return resp

    async def _stats(self, request: web.Request) -> web.Response:
        payload = self.stats.to_dict()
        if request.query.get("reset") == "1":  # between measured runs (the benchmarks)
            self.reset_stats()
        return web.json_response(payload)
