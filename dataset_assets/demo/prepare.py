"""Demo inputs: a folder of generated images, a URL list with realistic warts, and a spec.

The URL list has the problems real lists have (duplicates that differ only in case or
fragment, non-http rows, captions too short to keep, dead links, an opted-out image), so the
demo exercises the filters and the per-row statuses, not just the happy path.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from dataset_assets.spec import DEMO_SPEC_TEMPLATE
from dataset_assets_tests.fakeweb.images import make_image, web_like_sizes
from dataset_assets_tests.fakeweb.server import ImageServer

CAPTION_WORDS = (
    "red",
    "blue",
    "wide",
    "tall",
    "quiet",
    "busy",
    "old",
    "new",
    "street",
    "field",
    "sky",
    "river",
)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def urls(self) -> Path:
        return self.root / "urls.csv"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def log_file(self) -> Path:
        """Every Dagster event of the demo's runs (DEBUG included), and Python's warnings."""
        return self.root / "logs" / "dagster.log"


def _write_image(args: tuple[Path, int, int, int]) -> None:
    path, seed, width, height = args
    path.write_bytes(make_image(seed, width, height))


def generate_images(folder: Path, count: int) -> list[str]:
    """Write ``count`` images once; later demo runs reuse them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(count)]
    todo = [
        (folder / name, i, w, h)
        for i, (name, (w, h)) in enumerate(zip(names, web_like_sizes(count), strict=True))
        if not (folder / name).exists()
    ]
    if todo:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_write_image, todo, chunksize=32))
    return names


def caption(i: int) -> str:
    words = [CAPTION_WORDS[(i * 7 + k * 3) % len(CAPTION_WORDS)] for k in range(2 + i % 4)]
    return " ".join(words) + f" photo {i}"


FIRST_WART_ROW = 3  # the broken rows come after the rows they duplicate


def write_url_list(path: Path, server: ImageServer, names: list[str]) -> int:
    rows = [(server.url(name), caption(i), i) for i, name in enumerate(names)]
    n = len(names)
    base = len(rows)
    host = server.base_url.split("//", 1)[1]
    warts = [
        (server.url(names[1]).replace(host, host.upper()) + "#top", "duplicate of row 1", base),
        (f"  {server.url(names[2])}  ", "duplicate of row 2 with spaces", base + 1),
        ("ftp://127.0.0.1/not-http.jpg", "an ftp link", base + 2),
        ("not a url at all", "garbage row", base + 3),
        (server.url(names[3 % n]) + "?size=large", "ok", base + 4),  # caption too short: filtered
        (server.url_for("/status/404"), "a dead link", base + 5),
        (server.url_for("/status/410"), "a gone link", base + 6),
        (server.url_for("/robots-tag/noai/" + names[4 % n]), "an opted-out image", base + 7),
        (server.url_for("/html"), "an html page instead of an image", base + 8),
    ]
    # Spread through the list, not appended: at the end they made the last shard (1504 rows cut
    # into 250s) four broken rows and nothing else, a shard below any success floor.
    step = max(1, (len(rows) - FIRST_WART_ROW) // (len(warts) + 1))
    for k, wart in enumerate(warts):
        rows.insert(min(len(rows), FIRST_WART_ROW + (k + 1) * step + k), wart)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption", "source_id"])
        writer.writerows(rows)
    return len(rows)


def write_spec(paths: DemoPaths) -> None:
    spec = yaml.safe_load(DEMO_SPEC_TEMPLATE.read_text())
    spec.update(url_list=str(paths.urls), output_folder=str(paths.dataset))
    paths.spec.write_text(yaml.safe_dump(spec, sort_keys=False))


def instance_yaml(log_file: Path) -> str:
    """The demo instance's ``dagster.yaml``.

    Local SQLite storage, no telemetry, run monitoring (a run whose process was killed is marked
    failed, and so picked up by "materialize missing"), and Dagster's ``python_logs`` handler
    config sending every event of every run, DEBUG included, to ``log_file``: the demo's
    terminal then shows only its progress and summary, and runs started from ``dagster dev``
    on this instance log there too.
    """
    config = {
        "telemetry": {"enabled": False},
        "run_monitoring": {"enabled": True},
        "python_logs": {
            "dagster_handler_config": {
                "handlers": {
                    "demo_log_file": {
                        "class": "logging.FileHandler",
                        "filename": str(log_file),
                        "level": "DEBUG",
                        "formatter": "demo_plain",
                    }
                },
                "formatters": {"demo_plain": {"format": "%(asctime)s %(levelname)s %(message)s"}},
            }
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def prepare_demo(paths: DemoPaths, server: ImageServer, count: int) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.dagster_home.mkdir(exist_ok=True)
    paths.log_file.parent.mkdir(exist_ok=True)
    # Rewritten every time: the demo owns this instance, and the log file's path is absolute.
    (paths.dagster_home / "dagster.yaml").write_text(instance_yaml(paths.log_file))
    names = generate_images(paths.images, count)
    write_url_list(paths.urls, server, names)
    write_spec(paths)
