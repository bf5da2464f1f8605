"""Helpers shared by the engine benchmarks: corpus cache, loopback server, measured subprocesses.

Everything here talks to loopback only. The image server runs in its own process (its CPU is
not charged to the downloader being measured) and stops by itself when its lifetime ends or
when this process dies; every measured run is a subprocess in its own session with a
wall-clock limit, killed as a group if it overruns.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import math
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_CACHE = Path(
    os.environ.get("DATASET_ASSETS_BENCH_CACHE", "~/.cache/dataset_assets_bench")
).expanduser()
SAMPLE_INTERVAL_S = 0.2
CORPUS_QUALITY = 90  # quality the synthetic "web" JPEGs are stored at (as in dataset_assets.demo)


# --------------------------------------------------------------------------- corpus
# What each corpus kind is made of (speed must not depend on one corpus):
#   laion: dataset_assets.demo's web-like JPEGs (q90, 4:2:0, baseline; 100..1600 px sides);
#   mixed: JPEG quality 75..95, 20 % progressive, 20 % 4:4:4, 15 % PNG, long side log-normal
#          around 350 px with 3 % of 2000..3200 px;
#   heavy: 30 % 2400x1800 PNGs (~100 ms of image work each), the rest like mixed's JPEGs.
# Every file is named NNNNNN.jpg whatever its format: both tools sniff the bytes, not the name.
CORPUS_KINDS = ("laion", "mixed", "heavy")


def _mixed_params(rng: np.random.Generator, png_share: float) -> tuple[int, int, str, list[int]]:
    """(width, height, extension, cv2 encode params) of one image of the mixed corpus."""
    long = 2000 + rng.random() * 1200 if rng.random() < 0.03 else math.exp(rng.normal(math.log(350), 0.55))
    long = int(min(max(long, 64), 3200))
    short = max(32, int(long * rng.uniform(0.55, 1.0)))
    width, height = (long, short) if rng.random() < 0.6 else (short, long)
    if rng.random() < png_share:
        return width, height, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))]
    if rng.random() < 0.2:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    if rng.random() < 0.2:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return width, height, ".jpg", params


def _make_one(job: tuple[str, str, int, int, int, int]) -> int:
    from dataset_assets_tests.fakeweb.images import make_image, pixels

    path, kind, seed, index, width, height = job
    if kind == "laion":
        data = make_image(seed * 1_000_003 + index, width, height, fmt="jpg", quality=CORPUS_QUALITY)
    else:
        rng = np.random.default_rng([seed, index])
        if kind == "heavy" and rng.random() < 0.3:
            width, height, ext, params = 2400, 1800, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]
        else:
            width, height, ext, params = _mixed_params(rng, png_share=0.15 if kind == "mixed" else 0.0)
        ok, buffer = cv2.imencode(ext, pixels(seed * 1_000_003 + index, width, height), params)
        if not ok:
            raise RuntimeError(f"cv2.imencode failed for {path}")
        data = buffer.tobytes()
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return len(data)


def corpus_name(i: int) -> str:
    return f"{i:06d}.jpg"


def ensure_corpus(
    n: int, seed: int = 0, cache: Path = DEFAULT_CACHE, workers: int | None = None, kind: str = "laion"
) -> Path:
    """``n`` images of corpus ``kind`` on disk, generated once and reused.

    Image ``i`` depends only on ``(kind, seed, i)`` (for laion: the same sizes and pixels as
    ``iter_corpus``), so a bigger corpus extends a smaller one; only missing files are
    generated, on every core.
    """
    from dataset_assets_tests.fakeweb.images import web_like_sizes

    if kind not in CORPUS_KINDS:
        raise ValueError(f"corpus kind {kind!r} is not one of {', '.join(CORPUS_KINDS)}")
    folder = cache / (f"corpus-seed{seed}" if kind == "laion" else f"corpus-{kind}-seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    sizes = web_like_sizes(n, seed)
    jobs = [
        (str(folder / corpus_name(i)), kind, seed, i, w, h)
        for i, (w, h) in enumerate(sizes)
        if not (folder / corpus_name(i)).exists()
    ]
    if jobs:
        started = time.monotonic()
        print(f"generating {len(jobs)} {kind} images into {folder} (one-off, cached) ...", flush=True)
        with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=16):
                pass
        print(f"  done in {time.monotonic() - started:.0f}s", flush=True)
    return folder


def corpus_stats(folder: Path, n: int) -> tuple[float, float]:
    """(mean KB, total MB) of the first n files; also pulls them into the page cache."""
    total = 0
    for i in range(n):
        with open(folder / corpus_name(i), "rb") as handle:
            total += len(handle.read())
    return total / n / 1000, total / 1e6


# --------------------------------------------------------------------------- server, URL list
def start_server(
    corpus: Path,
    hosts: int,
    latency: tuple[float, float],
    lifetime_s: float,
    processes: int = 1,
    recorded_paths: int = 100,
) -> ServerGroup:
    """The loopback image server: ``processes`` server processes sharing ``hosts`` addresses
    127.0.0.1.. between them (one process serves a few thousand requests/s: a many-core run
    needs several, or the server is what gets measured)."""
    from dataset_assets_tests.fakeweb.process import serve_in_subprocess
    from dataset_assets_tests.fakeweb.server import ServerConfig

    processes = max(1, min(processes, hosts))
    servers = []
    try:
        first = 0
        for k in range(processes):
            count = hosts // processes + (1 if k < hosts % processes else 0)
            config = ServerConfig(
                latency_s=latency,
                host=str(ipaddress.IPv4Address("127.0.0.1") + first),
                extra_hosts=count - 1,
                max_lifetime_s=lifetime_s,
                max_recorded_paths=recorded_paths,
            )
            servers.append(serve_in_subprocess(root=corpus, config=config))
            first += count
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return ServerGroup(servers)


class ServerGroup:
    """Several image server processes seen as one: each host address belongs to one of them."""

    def __init__(self, servers: Sequence[Any]) -> None:
        self.servers = list(servers)
        self._by_host = {host: server for server in self.servers for host in server.hosts}

    @property
    def hosts(self) -> list[str]:
        return list(self._by_host)

    @property
    def pids(self) -> list[int]:
        return [server.process.pid for server in self.servers]

    def url(self, name: str, host: str) -> str:
        return self._by_host[host].url(name, host)

    def describe(self) -> str:
        ports = sorted({server.port for server in self.servers})
        return (
            f"{len(self.servers)} process(es) (pids {', '.join(map(str, self.pids))}), hosts "
            f"{self.hosts[0]}..{self.hosts[-1]}, port(s) {', '.join(map(str, ports))}"
        )

    def stats(self, reset: bool = False) -> list[Any]:
        """Each server process's counters (ServerStats); ``reset`` zeroes them after reading."""
        return [server.stats(reset=reset) for server in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def write_url_list(
    path: Path,
    server: ServerGroup,
    n: int,
    corpus_size: int | None = None,
    host_names: int = 0,
    zipf: float = 0.9,
    seed: int = 0,
) -> int:
    """A LAION-like parquet (URL, TEXT) over the server's hosts; returns the distinct hosts used.

    Rows go round-robin over the server's addresses, or, with ``host_names`` > 0, over that many
    host names drawn Zipf(``zipf``) (a few names hold many rows, most hold one or two: the long
    tail of a web crawl); name ``hK.ipN.test`` resolves to 127.0.0.N through
    :mod:`bench.dns_server`. With ``corpus_size`` < n, rows reuse the corpus's images under
    distinct URLs (a query string the server ignores), so that a long list needs no bigger corpus.
    """
    hosts = server.hosts
    size = corpus_size or n
    if host_names:
        weights = np.arange(1, host_names + 1, dtype=np.float64) ** -zipf
        ranks = np.random.default_rng(seed).choice(host_names, size=n, p=weights / weights.sum())
    urls = []
    for i in range(n):
        name = corpus_name(i % size)
        if host_names:
            rank = int(ranks[i])
            address = hosts[rank % len(hosts)]
            named = f"h{rank}.ip{address.rsplit('.', 1)[1]}.test"
            url = server.url(name, address).replace(f"//{address}:", f"//{named}:", 1)
        else:
            url = server.url(name, hosts[i % len(hosts)])
        urls.append(url + (f"?copy={i // size}" if i >= size else ""))
    captions = [f"a synthetic photo number {i} of a thing" for i in range(n)]
    pq.write_table(pa.table({"URL": urls, "TEXT": captions}), path)
    return len({url.split("/")[2] for url in urls})


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for measured runs: no proxies (loopback must be direct), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.0/8,localhost"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- measured runs
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as handle:
                text = handle.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        pid = int(text[: text.index(" ")])
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(pid)
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _hwm_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) of one process, in kB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMonitor(threading.Thread):
    """Samples every process of a tree every 0.2 s; keeps each one's peak RSS (kernel VmHWM)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True, name="rss-monitor")
        self.root = root
        self.peak_kb: dict[int, int] = {}
        self.cpu_s: dict[int, float] = {}  # last CPU time seen per process (lower bound)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid in _tree(self.root):
                kb = _hwm_kb(pid)
                if kb > self.peak_kb.get(pid, 0):
                    self.peak_kb[pid] = kb
                cpu = process_cpu_s(pid)
                if cpu > self.cpu_s.get(pid, 0.0):
                    self.cpu_s[pid] = cpu
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    @property
    def root_cpu_s(self) -> float:
        return self.cpu_s.get(self.root, 0.0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    @property
    def root_mb(self) -> float:
        return self.peak_kb.get(self.root, 0) / 1024

    @property
    def max_child_mb(self) -> float:
        return max((kb for pid, kb in self.peak_kb.items() if pid != self.root), default=0) / 1024

    @property
    def max_mb(self) -> float:
        return max(self.peak_kb.values(), default=0) / 1024


@dataclass
class RunResult:
    label: str
    wall_s: float
    cpu_s: float  # user + sys of the whole process tree (reaped children included)
    returncode: int
    peak_rss_mb: float  # largest single process
    parent_rss_mb: float
    worker_rss_mb: float  # largest child process
    output_tail: str = ""
    parent_cpu_s: float = 0.0  # the top process alone (sampled, so a lower bound)
    server_cpu_s: float = 0.0  # CPU the image server spent during the run (same cores)
    foreign_cpu_s: float = 0.0  # CPU used by everything else on the machine meanwhile (noise)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return int(self.stats.get("successes", 0))

    @property
    def images_per_s(self) -> float:
        return self.successes / self.wall_s if self.wall_s > 0 else 0.0

    def _ms_per_image(self, cpu_s: float) -> float:
        return 1000 * cpu_s / self.successes if self.successes else math.nan

    @property
    def cpu_ms_per_image(self) -> float:
        return self._ms_per_image(self.cpu_s)

    @property
    def foreign_cores(self) -> float:
        """Cores' worth of unrelated load during the run: > ~0.1 means the timing is disturbed."""
        return self.foreign_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def parent_ms_per_image(self) -> float:
        return self._ms_per_image(self.parent_cpu_s)

    @property
    def server_ms_per_image(self) -> float:
        return self._ms_per_image(self.server_cpu_s)


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (user + nice + system + irq + softirq + steal)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """user + sys CPU seconds of one live process (its threads included), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(
    label: str,
    cmd: Sequence[str],
    env: dict[str, str],
    timeout_s: float,
    cwd: str | None = None,
    server_pids: Sequence[int] = (),
) -> RunResult:
    """Run ``cmd`` to completion (or kill its whole session at ``timeout_s``) and measure it.

    ``server_pids``: also report how much CPU the image server spent meanwhile (it shares the cores).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = sum(process_cpu_s(pid) for pid in server_pids)
    busy_before = machine_busy_s()
    started = time.monotonic()
    log_path = Path(env.get("BENCH_LOG_DIR", "/tmp")) / f"bench-{label}-{os.getpid()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        try:
            returncode = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait(30)
            print(f"  {label}: killed after the {timeout_s:.0f}s limit", flush=True)
        finally:
            wall = time.monotonic() - started
            monitor.stop()
            # Stray grandchildren (none expected) must not outlive the measurement.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = sum(process_cpu_s(pid) for pid in server_pids) - server_before
    foreign = max(0.0, machine_busy_s() - busy_before - cpu - server_cpu)
    tail = log_path.read_text(errors="replace")[-3000:]
    log_path.unlink(missing_ok=True)
    return RunResult(
        label,
        wall,
        cpu,
        returncode,
        monitor.max_mb,
        monitor.root_mb,
        monitor.max_child_mb,
        tail,
        parent_cpu_s=monitor.root_cpu_s,
        server_cpu_s=server_cpu,
        foreign_cpu_s=foreign,
    )


def read_stats(folder: Path) -> dict[str, Any]:
    """Sum img2dataset-format ``NNNNN_stats.json`` files (both tools write the same fields)."""
    total: dict[str, Any] = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    statuses: dict[str, int] = {}
    for path in sorted(folder.glob("*_stats.json")):
        data = json.loads(path.read_text())
        for key in list(total):
            total[key] += int(data.get(key, 0))
        for message, n in data.get("status_dict", {}).items():
            statuses[message] = statuses.get(message, 0) + int(n)
    total["status_dict"] = statuses
    return total


def python_has(python: str, module: str) -> bool:
    probe = subprocess.run(
        [python, "-c", f"import {module}"],
        capture_output=True,
        env=clean_env(NO_ALBUMENTATIONS_UPDATE="1"),
        timeout=300,
    )
    return probe.returncode == 0


# --------------------------------------------------------------------------- quality
def reference_image(
    raw: bytes, size: int, down: int = cv2.INTER_AREA, up: int = cv2.INTER_LANCZOS4
) -> np.ndarray:
    """img2dataset's keep_ratio pipeline written out: full decode, A.SmallestMaxSize geometry
    (scale = size / short side, sides ``max(1, round(side * scale))``), area down / lanczos up."""
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("reference decode failed")
    height, width = image.shape[:2]
    short = min(height, width)
    scale = size / short
    if scale != 1.0:
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=down if short > size else up)
    return image


def encode_jpg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("encode failed")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.nan
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (NaN ignored; inf allowed, e.g. PSNR of identical images)."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q / 100) - 1))]


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def python_exe() -> str:
    return sys.executable
