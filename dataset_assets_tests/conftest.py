"""Shared fixtures: a real image server on 127.0.0.1 and helpers to build shard inputs."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from dataset_assets.engine import DownloadOptions
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig
from dataset_assets_tests.scale_fixtures import postgres_db, s3_server  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def test_images() -> dict[str, bytes]:
    """A few images of known sizes, in several formats."""
    return {
        "landscape.jpg": make_image(1, 640, 480, "jpg"),
        "portrait.jpg": make_image(2, 300, 500, "jpg"),
        "small.png": make_image(3, 100, 80, "png"),
        "photo.webp": make_image(4, 400, 400, "webp"),
    }


@pytest.fixture
def image_server(test_images: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(images=test_images, config=ServerConfig(max_lifetime_s=300)) as server:
        yield server


def rows(urls: list[str | None], captions: list[str | None] | None = None, **extra: list) -> pa.Table:
    columns: dict[str, list] = {"url": urls}
    if captions is not None:
        columns["caption"] = captions
    columns.update(extra)
    return pa.table(columns)


# Every per-origin policy file off (robots.txt, tdmrep.json, ai.txt, and the signals read from
# them): for tests that count requests or connections, or whose host is down on purpose.
NO_POLICY_FILES: dict[str, bool] = {
    "respect_robots_txt": False,
    "respect_content_signal": False,
    "respect_content_usage": False,
    "respect_tdmrep": False,
    "respect_ai_txt": False,
}


def local_options(**overrides: object) -> DownloadOptions:
    """Options for tests: loopback allowed, small pools, short deadlines."""
    values: dict[str, object] = {
        "allow_private_addresses": True,
        "processes_count": 1,
        "thread_count": 16,
        "timeout": 5,
        "output_format": "webdataset",
    }
    values.update(overrides)
    return DownloadOptions(**values)


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie awaiting its parent's wait() counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
