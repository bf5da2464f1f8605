"""Tests for the synthetic-image corpus and the loopback test server.

Every request goes to 127.0.0.x through http.client or a proxy-less urllib opener, so an
environment proxy setting can never route test traffic off the machine.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from dataset_assets_tests.fakeweb.images import corpus_images, make_image, web_like_sizes, write_corpus
from dataset_assets_tests.fakeweb.process import serve_in_subprocess
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

SIZES = {"a.jpg": (64, 48), "b.png": (40, 30), "c.webp": (33, 77)}


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {
        name: make_image(i, w, h, fmt=name.rsplit(".", 1)[1])
        for i, (name, (w, h)) in enumerate(SIZES.items())
    }


@pytest.fixture
def server(images: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=60, extra_hosts=1)) as srv:
        yield srv


def fetch(url: str, timeout: float = 5.0) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One GET on a fresh connection, without following redirects."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.hostname.startswith("127."), url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def urlopen(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """GET following redirects, with proxies disabled so the request stays on loopback."""
    assert urlsplit(url).hostname.startswith("127."), url  # type: ignore[union-attr]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status, resp.geturl(), resp.read()


# -- images ----------------------------------------------------------------------------------------


def test_make_image_is_deterministic_and_textured() -> None:
    a = make_image(5, 200, 150)
    assert a == make_image(5, 200, 150)
    assert a != make_image(6, 200, 150)
    pixels = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape == (150, 200, 3)
    # Flat colour would have ~0 high-frequency energy; realistic texture has plenty.
    assert float(np.abs(cv2.Laplacian(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean()) > 1.0
    with pytest.raises(ValueError):
        make_image(1, 10, 10, fmt="tiff")


def test_web_like_sizes_distribution() -> None:
    sizes = web_like_sizes(2000, seed=3)
    assert sizes == web_like_sizes(2000, seed=3)
    assert web_like_sizes(10, seed=3) == sizes[:10]
    short = np.array([min(s) for s in sizes])
    long = np.array([max(s) for s in sizes])
    assert 0.33 < (short < 256).mean() < 0.47
    assert short.min() >= 100 and long.max() <= 1600
    assert ((long / short) <= 2.01).all()
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_write_corpus(tmp_path: Path) -> None:
    names = write_corpus(tmp_path / "c", 4, seed=1)
    assert names == [f"{i:06d}.jpg" for i in range(4)]
    sizes = web_like_sizes(4, seed=1)
    for name, (w, h) in zip(names, sizes, strict=True):
        data = (tmp_path / "c" / name).read_bytes()
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h, w)
    assert corpus_images(2, seed=1) == {n: (tmp_path / "c" / n).read_bytes() for n in names[:2]}


# -- in-thread server ------------------------------------------------------------------------------


def test_start_stop(images: dict[str, bytes]) -> None:
    srv = ImageServer(images=images, config=ServerConfig(max_lifetime_s=60))
    srv.start()
    assert srv.running
    assert srv.base_url == f"http://127.0.0.1:{srv.port}"
    assert fetch(srv.url("a.jpg"))[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    assert not srv.running and not srv.stopped_by_watchdog
    with pytest.raises(OSError):
        fetch(srv.url("a.jpg"), timeout=2)
    with pytest.raises(RuntimeError):
        srv.start()


@pytest.mark.parametrize("name", sorted(SIZES))
def test_images_decode_with_declared_size(server: ImageServer, images: dict[str, bytes], name: str) -> None:
    status, headers, body = fetch(server.url(name))
    assert status == 200
    assert body == images[name]
    assert int(headers["Content-Length"]) == len(body)
    ext = name.rsplit(".", 1)[1]
    assert headers["Content-Type"] == {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[ext]
    pixels = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    w, h = SIZES[name]
    assert pixels.shape == (h, w, 3)


def test_root_folder_serving_and_traversal(tmp_path: Path) -> None:
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "x.jpg").write_bytes(b"jpegish")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    with ImageServer(root=tmp_path / "pub", config=ServerConfig(max_lifetime_s=30)) as srv:
        assert fetch(srv.url("x.jpg"))[2] == b"jpegish"
        assert fetch(srv.url("../secret.jpg"))[0] == 404


def test_latency_is_applied(images: dict[str, bytes]) -> None:
    with ImageServer(images=images, config=ServerConfig(latency_s=(0.2, 0.3), max_lifetime_s=30)) as srv:
        for path in ("/img/a.jpg", "/status/404"):
            t0 = time.monotonic()
            fetch(srv.url_for(path))
            assert time.monotonic() - t0 >= 0.2


def test_error_routes(server: ImageServer) -> None:
    assert fetch(server.url("missing.jpg"))[0] == 404
    for code in (403, 404, 429, 500, 503):
        status, headers, body = fetch(server.url_for(f"/status/{code}"))
        assert status == code and headers["Content-Type"].startswith("text/html") and body
    assert fetch(server.url_for("/status/204"))[0] == 204
    status, headers, body = fetch(server.url_for("/html"))
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<html" in body
    status, _, body = fetch(server.url_for("/robots.txt"))
    assert status == 200 and b"User-agent: *" in body
    server.set_robots_txt("User-agent: *\nDisallow: /\n")
    assert fetch(server.url_for("/robots.txt"))[2] == b"User-agent: *\nDisallow: /\n"


def test_redirect_chain(server: ImageServer, images: dict[str, bytes]) -> None:
    server.reset_stats()
    status, final_url, body = urlopen(server.url_for("/redirect/3/a.jpg", host="127.0.0.2"))
    assert status == 200 and body == images["a.jpg"]
    assert final_url == server.url_for("/redirect/0/a.jpg", host="127.0.0.2")
    stats = server.stats
    assert stats.paths == [f"/redirect/{n}/a.jpg" for n in (3, 2, 1, 0)]
    assert stats.host("127.0.0.2").requests == 4 and stats.total_requests == 4

    status, headers, _ = fetch(server.url_for("/redirect-loop"))
    assert status == 302 and headers["Location"] == "/redirect-loop"
    with pytest.raises(urllib.error.HTTPError):
        urlopen(server.url_for("/redirect-loop"))


def test_robots_tag_headers(server: ImageServer) -> None:
    _, headers, _ = fetch(server.url_for("/robots-tag/noai/a.jpg"))
    assert headers["X-Robots-Tag"] == "noai"
    _, headers, _ = fetch(server.url_for("/robots-tag/otherbot%3A%20noai/a.jpg"))
    assert headers["X-Robots-Tag"] == "otherbot: noai"
    server.set_header("*.png", {"X-Robots-Tag": "noindex, noai"})
    assert fetch(server.url("b.png"))[1]["X-Robots-Tag"] == "noindex, noai"
    assert "X-Robots-Tag" not in fetch(server.url("a.jpg"))[1]


def test_truncated_body(server: ImageServer, images: dict[str, bytes]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/truncated/a.jpg")
        resp = conn.getresponse()
        assert int(resp.headers["Content-Length"]) == len(images["a.jpg"])
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
        assert len(err.value.partial) == len(images["a.jpg"]) // 2
    finally:
        conn.close()


def test_per_host_concurrency_counters(server: ImageServer) -> None:
    # Sequential requests on one keep-alive connection: never more than one of anything.
    server.reset_stats()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/img/a.jpg", headers={"User-Agent": "seq-bot/1.0"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
    seq = server.stats.host("127.0.0.1")
    assert (seq.peak_connections, seq.peak_in_flight, seq.requests) == (1, 1, 3)

    # Two overlapping requests to 127.0.0.2 on separate connections.
    server.reset_stats()
    results: list[int] = []
    slow_url = server.url_for("/slow/0.5/a.jpg", "127.0.0.2")
    threads = [threading.Thread(target=lambda: results.append(fetch(slow_url)[0])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200, 200]
    stats = server.stats
    par = stats.host("127.0.0.2")
    assert par.peak_connections >= 2 and par.peak_in_flight >= 2 and par.requests == 2
    assert stats.host("127.0.0.1").requests == 0
    assert "seq-bot/1.0" not in stats.user_agents  # reset_stats() forgot the first phase


def test_user_agents_recorded(server: ImageServer) -> None:
    server.reset_stats()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/img/a.jpg", headers={"User-Agent": "polite-bot/2.0"})
    conn.getresponse().read()
    conn.close()
    assert server.stats.user_agents == {"polite-bot/2.0": 1}


def test_stop_is_prompt_with_trickle_in_flight(images: dict[str, bytes]) -> None:
    srv = ImageServer(images=images, config=ServerConfig(max_lifetime_s=60)).start()
    outcome: list[BaseException] = []

    def slow_reader() -> None:
        try:
            fetch(srv.url_for("/trickle/a.jpg"), timeout=10)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    time.sleep(0.6)
    assert srv.stats.host().in_flight == 1
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 3.0
    reader.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], http.client.IncompleteRead)


def test_watchdog_stops_server(images: dict[str, bytes]) -> None:
    srv = ImageServer(images=images, config=ServerConfig(max_lifetime_s=1.0)).start()
    assert fetch(srv.url("a.jpg"))[0] == 200
    assert srv.wait(5.0)
    assert srv.stopped_by_watchdog and not srv.running
    with pytest.raises(OSError):
        fetch(srv.url("a.jpg"), timeout=2)
    srv.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::1", "localhost"])
def test_config_refuses_non_loopback(host: str) -> None:
    with pytest.raises(ValueError):
        ServerConfig(host=host)


def test_extra_hosts_are_consecutive_loopback_addresses() -> None:
    assert ServerConfig(extra_hosts=2).hosts == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert ServerConfig(host="127.0.0.255", extra_hosts=1).hosts == ["127.0.0.255", "127.0.1.0"]


# -- subprocess server ----------------------------------------------------------------------------


def test_subprocess_server_answers_and_exits_on_stdin_close(tmp_path: Path) -> None:
    names = write_corpus(tmp_path, 2, seed=2)
    srv = serve_in_subprocess(tmp_path, ServerConfig(latency_s=(0.05, 0.1), max_lifetime_s=60))
    try:
        t0 = time.monotonic()
        status, _, body = fetch(srv.url(names[1]))
        assert time.monotonic() - t0 >= 0.05
        assert status == 200 and body == (tmp_path / names[1]).read_bytes()
        stats = srv.stats()
        assert stats.total_requests == 1 and stats.paths == [f"/img/{names[1]}"]
        assert srv.process.stdin is not None
        srv.process.stdin.close()
        assert srv.process.wait(10) == 0
    finally:
        srv.stop()
    with pytest.raises(OSError):
        fetch(srv.url(names[1]), timeout=2)
