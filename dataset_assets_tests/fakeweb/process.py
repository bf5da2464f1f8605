"""The loopback image server in a child process, and the ``python -m`` entry that runs it.

The benchmark uses a child process so that serving CPU is not charged to the downloader being
measured; the child exits as soon as its stdin closes (the parent died) or after its lifetime.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import urllib.request
from types import TracebackType

from dataset_assets.engine.worker import raise_open_files_limit
from dataset_assets_tests.fakeweb.server import (
    DEFAULT_ROBOTS_TXT,
    STATS_PATH,
    ImageServer,
    ServerConfig,
    ServerStats,
    _UrlMixin,
)

log = logging.getLogger(__name__)


class SubprocessServer(_UrlMixin):
    """Handle on a server running in a child process (see :func:`serve_in_subprocess`).

    The benchmark uses this so serving CPU is not charged to the downloader being measured.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, hosts: list[str]) -> None:
        self.process = process
        self._port = port
        self._hosts = hosts

    def stats(self, timeout_s: float = 10.0, reset: bool = False) -> ServerStats:
        """Fetch the child's counters over HTTP (loopback, proxies explicitly bypassed);
        ``reset`` zeroes them once read.

        The ``/_stats`` request itself is not counted, but its connection is, on the first host:
        put the client under test on other hosts (``extra_hosts``) if that matters.
        """
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        path = STATS_PATH + ("?reset=1" if reset else "")
        with opener.open(self.url_for(path), timeout=timeout_s) as resp:
            return ServerStats.from_dict(json.loads(resp.read()))

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Close the child's stdin (its shutdown signal), then escalate if it lingers."""
        proc = self.process
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> SubprocessServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_subprocess(
    root: str | os.PathLike[str] | None = None,
    config: ServerConfig | None = None,
    *,
    synthetic: int = 0,
    seed: int = 0,
    startup_timeout_s: float = 120.0,
    quiet: bool = True,
) -> SubprocessServer:
    """Start ``python -m dataset_assets_tests.fakeweb.process`` and wait until it reports its port.

    ``synthetic`` > 0 makes the child generate that many web-like JPEGs in memory instead of (or
    on top of) serving ``root``. The child dies when its lifetime ends, when
    :meth:`SubprocessServer.stop` is called, or when this process dies (its stdin closes).
    ``quiet`` drops the child's "serving on" banner; its warnings still reach our stderr.
    """
    config = config if config is not None else ServerConfig()
    cmd = [
        sys.executable,
        "-m",
        "dataset_assets_tests.fakeweb.process",
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--latency",
        repr(config.latency_s[0]),
        repr(config.latency_s[1]),
        "--max-lifetime",
        repr(config.max_lifetime_s),
        "--extra-hosts",
        str(config.extra_hosts),
        "--trickle-interval",
        repr(config.trickle_interval_s),
        "--max-recorded-paths",
        str(config.max_recorded_paths),
    ]
    if config.seed is not None:
        cmd += ["--latency-seed", str(config.seed)]
    if root is not None:
        cmd += ["--root", os.fspath(root)]
    if synthetic:
        cmd += ["--synthetic", str(synthetic), "--seed", str(seed)]
    if config.robots_txt != DEFAULT_ROBOTS_TXT:
        cmd += ["--robots-txt", config.robots_txt]
    if quiet:
        cmd.append("--quiet")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + startup_timeout_s
    line = b""
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                break
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:
                    break
                line += chunk
        port = int(line.strip())
    except (ValueError, OSError):
        proc.kill()
        proc.wait(10)
        raise RuntimeError(
            f"image server subprocess did not report a port (exit code {proc.returncode}, got {line!r})"
        ) from None
    return SubprocessServer(proc, port, config.hosts)


def _exit_when_stdin_closes(server: ImageServer) -> None:
    # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside the buffered reader holds
    # its lock and makes interpreter shutdown abort when the server exits for another reason.
    try:
        fd = sys.stdin.fileno()
        while os.read(fd, 65536):
            pass
    except (OSError, ValueError):
        pass
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_assets_tests.fakeweb.process",
        description="Serve images on loopback for tests, benchmarks and demos. Prints the port on "
        "the first stdout line; exits when stdin closes or after --max-lifetime seconds.",
    )
    parser.add_argument("--root", help="serve the files in this folder under /img/{name}")
    parser.add_argument("--synthetic", type=int, default=0, help="also serve N generated JPEGs")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed for --synthetic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--latency-seed", type=int, default=None)
    parser.add_argument("--max-lifetime", type=float, default=600.0)
    parser.add_argument("--extra-hosts", type=int, default=0)
    parser.add_argument("--trickle-interval", type=float, default=0.5)
    parser.add_argument("--max-recorded-paths", type=int, default=10_000)
    parser.add_argument("--robots-txt", default=DEFAULT_ROBOTS_TXT, help="robots.txt body")
    parser.add_argument("--quiet", action="store_true", help="no banner on stderr")
    parser.add_argument(
        "--ignore-stdin",
        action="store_true",
        help="do not exit on stdin EOF (for running detached; the lifetime still applies)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # One server process holds every client's connections: a long tail's two workers keep
    # more than 1 024 open at once, a common soft limit.
    raise_open_files_limit()

    config = ServerConfig(
        latency_s=(args.latency[0], args.latency[1]),
        max_lifetime_s=args.max_lifetime,
        host=args.host,
        port=args.port,
        extra_hosts=args.extra_hosts,
        robots_txt=args.robots_txt,
        trickle_interval_s=args.trickle_interval,
        max_recorded_paths=args.max_recorded_paths,
        seed=args.latency_seed,
    )
    images: dict[str, bytes] = {}
    if args.synthetic:
        from dataset_assets_tests.fakeweb.images import corpus_images

        images = corpus_images(args.synthetic, args.seed)
    server = ImageServer(root=args.root, images=images, config=config).start()
    print(server.port, flush=True)
    if not args.quiet:
        print(f"serving on {', '.join(server.hosts)} port {server.port} ({server.base_url})", file=sys.stderr)
    if not args.ignore_stdin:
        threading.Thread(target=_exit_when_stdin_closes, args=(server,), daemon=True).start()
    try:
        # The server's own watchdog fires at max_lifetime; the margin only covers a wedged loop.
        if not server.wait(config.max_lifetime_s + 30.0):
            log.error("server did not stop on its own; exiting hard")
            sys.stdout.flush()
            os._exit(3)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
