"""Hostile web, polite crawler: every misbehaviour gets its exact per-row status.

One real loopback server plays every bad actor at once; the shard must survive all of them,
store the good images, and never overstep the politeness limits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import zlib
from collections.abc import Iterator

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_assets.engine.consent.robots import parse_robots
from dataset_assets.engine.runner import download_shard
from dataset_assets_tests.conftest import NO_POLICY_FILES, local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

OK = ("success", None)
GOOD_JPEG = make_image(5, 120, 90)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 30_000, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A small file whose header declares side x side pixels of zeros (8-bit grey by default)."""
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _pil(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _exif_rotated() -> bytes:
    """A 40x20 JPEG stored sideways (left half red) with EXIF orientation 6 (rotate 90 CW)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def hostile_images() -> dict[str, bytes]:
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:, 40:, 3] = 255  # left half fully transparent
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    jpeg = GOOD_JPEG
    return {
        "good.jpg": jpeg,
        "private.jpg": jpeg,
        "with space.jpg": jpeg,
        "café.jpg": jpeg,
        "alpha.png": cv2.imencode(".png", rgba)[1].tobytes(),
        "gray16.png": cv2.imencode(".png", gray16)[1].tobytes(),
        "gray.jpg": _pil(Image.fromarray(gray16.astype(np.uint8)), "JPEG"),
        "cmyk.jpg": _pil(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG"),
        "photo.webp": make_image(6, 70, 50, "webp"),
        "anim.gif": _pil(Image.new("P", (30, 20), 3), "GIF", transparency=3),
        "rotated.jpg": _exif_rotated(),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "bomb.png": png_bomb(),
        "deep.png": png_bomb(9_000, bit_depth=16, colour_type=6),  # 81 Mpx, but 648 MB as RGBA16
    }


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[ImageServer]:
    config = ServerConfig(max_lifetime_s=300, extra_hosts=1, trickle_interval_s=0.5)
    with ImageServer(images=hostile_images(), config=config) as server:
        server.set_robots_txt("User-agent: *\nDisallow: /img/private\nAllow: /\n")
        yield server


def _statuses(folder, count: int) -> list[tuple[str, str | None]]:
    table = sorted(pq.read_table(folder / "00000.parquet").to_pylist(), key=lambda r: r["key"])
    assert len(table) == count, "every input row appears exactly once"
    return [(r["status"], r["error_message"]) for r in table], table


def test_each_hostile_case_gets_its_exact_status(hostile_server: ImageServer, tmp_path) -> None:
    s = hostile_server
    cases: list[tuple[str, tuple[str, str | None] | str]] = [
        (s.url("good.jpg"), OK),
        (s.url_for("/status/404"), ("failed_to_download", "HTTP Error 404: Not Found")),
        (s.url_for("/status/403"), ("failed_to_download", "HTTP Error 403: Forbidden")),
        (s.url_for("/status/410"), ("failed_to_download", "HTTP Error 410: Gone")),
        (s.url_for("/status/500"), ("failed_to_download", "HTTP Error 500: Internal Server Error")),
        (
            s.url_for("/hostile/throttle-forever/x.jpg"),
            ("failed_to_download", "HTTP Error 503: Service Unavailable"),
        ),
        (s.url_for("/hostile/retry-after-1/good.jpg"), OK),
        (s.url_for("/slow/30/good.jpg"), ("failed_to_download", "timed out after 2s (total deadline)")),
        (s.url_for("/trickle/good.jpg"), ("failed_to_download", "timed out after 2s (total deadline)")),
        (s.url_for("/truncated/good.jpg"), "failed_to_download:connection closed early"),
        (s.url("truncated.jpg"), ("failed_to_resize", "Image decoding error")),
        (s.url_for("/hostile/empty/x.jpg"), ("failed_to_download", "empty body")),
        (s.url_for("/html"), ("failed_to_download", "not an image (text/html)")),
        (s.url_for("/hostile/wrong-type/good.jpg"), OK),  # a real image with a wrong type still works
        (
            s.url_for("/robots-tag/noimageai/good.jpg"),
            "failed_to_download:X-Robots-Tag directive (noimageai)",
        ),
        (s.url_for("/robots-tag/dataset-assets%3A%20noai/good.jpg"), "failed_to_download:X-Robots-Tag"),
        (s.url_for("/robots-tag/otherbot%3A%20noindex/good.jpg"), OK),
        (s.url_for("/robots-tag/noarchive/good.jpg"), OK),
        (s.url_for("/redirect/3/good.jpg"), OK),
        (s.url_for("/redirect/12/good.jpg"), ("failed_to_download", "too many redirects (more than 10)")),
        (s.url_for("/redirect-loop"), "failed_to_download:redirect loop"),
        (s.url_for("/hostile/to-file/x"), "failed_to_download:unsupported URL scheme 'file'"),
        (s.url_for("/hostile/to-ftp/x"), "failed_to_download:unsupported URL scheme 'ftp'"),
        (s.url_for("/hostile/to-data/x"), "failed_to_download:unsupported URL scheme 'data'"),
        (s.url_for("/hostile/to-metadata/x"), "failed_to_download:link-local address 169.254.169.254"),
        (s.url("bomb.png"), "failed_to_resize:30000x30000 pixels, over the 100000000-pixel cap"),
        (
            s.url("deep.png"),
            (
                "failed_to_resize",
                "image header declares 9000x9000 pixels of 4 16-bit channels, 648000000 bytes decoded, "
                "over the 536870912-byte cap",
            ),
        ),
        (s.url_for("/hostile/endless/x.jpg"), "failed_to_download:body too large"),
        (
            s.url("private.jpg"),
            ("failed_to_download", f"disallowed by robots.txt of {s.base_url} (Disallow: /img/private)"),
        ),
        (s.url("alpha.png"), OK),
        (s.url("gray16.png"), OK),
        (s.url("gray.jpg"), OK),
        (s.url("cmyk.jpg"), OK),
        (s.url("photo.webp"), OK),
        (s.url("anim.gif"), OK),
        (s.url("rotated.jpg"), OK),
        (s.base_url + "/img/with space.jpg", OK),
        (s.base_url + "/img/café.jpg", OK),
        ("file:///etc/passwd", "failed_to_download:unsupported URL scheme 'file'"),
        ("http://169.254.169.254/latest/meta-data/", "failed_to_download:link-local address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "failed_to_download:cloud metadata host"),
        ("not a url", "failed_to_download:"),
    ]
    options = local_options(
        timeout=2,
        retries=1,
        max_body_bytes=1_000_000,
        resize_mode="keep_ratio",
        image_size=64,
        thread_count=16,
    )
    stats = download_shard(rows([url for url, _ in cases]), str(tmp_path), options, shard_id=0)
    got, table = _statuses(tmp_path, len(cases))
    for (url, expected), actual in zip(cases, got, strict=True):
        if isinstance(expected, tuple):
            assert actual == expected, url
        else:
            status, fragment = expected.split(":", 1)
            assert actual[0] == status and fragment in (actual[1] or ""), (url, actual)
        if actual[0] != "success":
            assert actual[1], f"{url}: a failure without a message"

    by_url = {r["url"]: r for r in table}
    rotated = by_url[s.url("rotated.jpg")]
    assert (rotated["original_width"], rotated["original_height"]) == (20, 40)  # upright: portrait
    assert stats.peak_worker_rss_mb < 400, "the bomb or the endless body inflated the worker"
    assert stats.opt_outs == {"robots.txt": 1, "x-robots-tag": 2}  # no refusal of ours counts
    paths = s.stats.paths
    assert "/img/private.jpg" not in paths, "a robots.txt-disallowed path was requested"
    assert paths.count("/hostile/throttle-forever/x.jpg") == 2  # retried once, as asked
    assert paths.count("/status/404") == 1  # never retried
    times = s.stats.first_seen["/hostile/retry-after-1/good.jpg"]
    assert len(times) == 2 and times[1] - times[0] >= 0.9, "Retry-After was not honoured"


def test_a_gzip_encoded_image_is_stored_as_the_image(hostile_server: ImageServer, tmp_path) -> None:
    # The premise: the wire body (what Content-Length counts) is larger than the image itself.
    assert len(gzip.compress(GOOD_JPEG, compresslevel=0)) > len(GOOD_JPEG)
    urls = [hostile_server.url_for(f"/hostile/{kind}/good.jpg") for kind in ("gzip", "gzip-cut")]
    stats = download_shard(rows(urls), str(tmp_path), local_options(resize_mode="no"), shard_id=0)
    whole, cut = sorted(pq.read_table(tmp_path / "00000.parquet").to_pylist(), key=lambda r: r["key"])
    assert (whole["status"], whole["error_message"]) == OK, whole
    assert whole["sha256"] == hashlib.sha256(GOOD_JPEG).hexdigest(), "not the decoded body"
    with tarfile.open(tmp_path / "00000.tar") as tar:
        stored = tar.extractfile("000000000.jpg").read()
    decoded = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == (90, 120)
    # A gzip body cut short on the wire still fails, although its length is no longer compared.
    assert cut["status"] == "failed_to_download"
    assert cut["error_message"].startswith("connection closed early"), cut
    assert stats.successes == 1


def test_connections_per_host_are_capped(hostile_server: ImageServer, tmp_path) -> None:
    host = "127.0.0.2"
    hostile_server.reset_stats()
    urls = [hostile_server.url_for(f"/slow/0.2/good.jpg?n={i}", host=host) for i in range(24)]
    options = local_options(max_connections_per_host=3, thread_count=32, **NO_POLICY_FILES)
    stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
    assert stats.successes == 24
    seen = hostile_server.stats.host(host)
    assert 1 <= seen.peak_connections <= 3
    assert seen.peak_in_flight <= 3


def test_a_dead_host_is_short_circuited(tmp_path) -> None:
    dead = [f"http://127.0.0.1:1/{i}.jpg" for i in range(8)]  # nothing listens on port 1
    options = local_options(host_failure_limit=3, **NO_POLICY_FILES, thread_count=1)
    download_shard(rows(dead), str(tmp_path), options, shard_id=0)
    messages = [m for _, m in _statuses(tmp_path, 8)[0]]
    assert sum(m.startswith("connection failed") for m in messages) == 3
    assert sum("skipped after 3 failures in a row" in m for m in messages) == 5


@pytest.mark.parametrize(
    ("robots_status", "expected"),
    [
        (404, OK),  # no robots.txt: everything allowed
        # unavailable: nothing fetched, and not called an opt-out
        (503, ("failed_to_download", "unavailable (HTTP 503); not fetched, retry later")),
    ],
)
def test_robots_txt_status_decides_when_there_are_no_rules(robots_status, expected, tmp_path) -> None:
    with ImageServer(
        images={"a.jpg": make_image(1, 40, 30)}, config=ServerConfig(max_lifetime_s=60)
    ) as server:
        server.set_robots_txt("User-agent: *\nDisallow: /\n", status=robots_status)
        download_shard(rows([server.url("a.jpg")]), str(tmp_path), local_options(), shard_id=0)
        status, message = _statuses(tmp_path, 1)[0][0]
        assert status == expected[0] and (expected[1] is None or expected[1] in message)
        assert server.stats.paths.count("/robots.txt") == 1


def test_unreachable_robots_txt_fails_the_rows_for_now_without_calling_it_an_opt_out(tmp_path) -> None:
    stats = download_shard(rows(["http://127.0.0.1:1/a.jpg"]), str(tmp_path), local_options(), shard_id=0)
    assert stats.opt_outs == {}  # an outage is never counted as a site's refusal
    ((status, message),) = _statuses(tmp_path, 1)[0]
    assert status == "failed_to_download"
    assert message.startswith("robots.txt of http://127.0.0.1:1 unavailable (connection failed")
    assert message.endswith("retry later") and "disallowed" not in message


@pytest.mark.parametrize(
    ("text", "path", "blocked"),
    [
        ("User-agent: *\nDisallow: /", "/a.jpg", "Disallow: /"),
        ("User-agent: *\nDisallow: /\nAllow: /img/", "/img/a.jpg", None),  # longest match wins
        ("User-agent: *\nDisallow: /*.gif$", "/x/y.gif", "Disallow: /*.gif$"),
        ("User-agent: *\nDisallow: /*.gif$", "/x/y.gif?z=1", None),
        ("User-agent: *\nDisallow: /a\nAllow: /a", "/a", None),  # allow wins a tie
        ("User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nAllow: /", "/a", None),
        ("User-agent: Dataset-Assets\nDisallow: /img\n\nUser-agent: *\nAllow: /", "/img/1", "Disallow: /img"),
        ("User-agent: *\nDisallow:", "/anything", None),
        ("# comment only", "/x", None),
        ("User-agent: *\nDisallow: /", "/robots.txt", None),
    ],
)
def test_robots_rules_follow_rfc_9309(text: str, path: str, blocked: str | None) -> None:
    assert parse_robots(text, ("dataset-assets",)).blocking_rule(path) == blocked
