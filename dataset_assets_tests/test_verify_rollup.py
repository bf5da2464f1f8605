"""Verification as a roll-up of the shards' stats: broken files fail checks, cost stays flat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.records import SUCCESS, SampleResult
from dataset_assets.engine.runner import download_shards
from dataset_assets.engine.shards.writer import ShardWriter
from dataset_assets.io.storage import OutputFolder
from dataset_assets.planning import write_shard_inputs
from dataset_assets.reporting.card import CardInputs, build_card
from dataset_assets.reporting.verify import CHECKSUM_SHARDS, DEEP_SAMPLE, verify_dataset
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer

IMAGE = make_image(5, 40, 30)


class CountingFileSystem(LocalFileSystem):
    """The local disk, counting the files opened through it (what verification reads)."""

    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened: list[str] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self.opened.append(path)
        return super()._open(path, mode, **kwargs)


def write_synthetic_shards(folder: str, shards: int, images: int) -> None:
    """``shards`` committed shards of ``images`` successes each, through the real writer."""
    options = local_options(number_sample_per_shard=images)
    output = OutputFolder(folder)
    for shard_id in range(shards):
        table = pa.table({"url": [f"http://127.0.0.1/{shard_id}/{i}.jpg" for i in range(images)]})
        writer = ShardWriter(output, options, shard_id, table)
        for i in range(images):
            writer.add(SampleResult(shard_id, i, SUCCESS, image=IMAGE, width=40, height=30,
                                    original_width=400, original_height=300))  # fmt: skip
        writer.close()


def _problems(report: Any, check: str) -> str:
    return " | ".join(report.checks[check].problems)


@pytest.fixture
def four_shards(image_server: ImageServer, tmp_path: Path) -> tuple[str, Any]:
    urls = [image_server.url(n) for n in ("landscape.jpg", "portrait.jpg", "small.png", "photo.webp")]
    options = local_options(number_sample_per_shard=4)
    out = str(tmp_path / "out")
    list(download_shards([InputShard(i, rows(urls)) for i in range(4)], out, options))
    return out, options


def test_broken_files_are_failed_checks_naming_the_shard(four_shards: tuple[str, Any]) -> None:
    out, options = four_shards
    root = Path(out)
    tar = root / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut short
    (root / "00002_stats.json").write_text('{"count": 4, "succ')  # garbage
    parquet = root / "00003.parquet"
    parquet.write_bytes(parquet.read_bytes()[:100])  # truncated
    (root / "00000_stats.json").write_text(json.dumps([1, 2]))  # JSON, but not stats

    report = verify_dataset(out, ["00000", "00001", "00002", "00003", "00004"], options)

    assert "shard 00000: 00000_stats.json is malformed" in _problems(report, "shards_complete")
    assert "shard 00002: 00002_stats.json is unreadable" in _problems(report, "shards_complete")
    assert "shard 00004 has no 00004_stats.json" in _problems(report, "shards_complete")
    assert report.shards_complete == 2
    sizes = _problems(report, "checksums_match")
    assert "shard 00001: 00001.tar is" in sizes and "(truncated or replaced)" in sizes
    assert "shard 00003: 00003.parquet is" in sizes
    assert "shard 00003: 00003.parquet is unreadable" in _problems(report, "rows_match_inputs")
    assert "shard 00001: 00001.tar" in _problems(report, "samples_decode")
    assert not report.checks["keys_unique"].problems

    # The card is built from the same stats and skips what it cannot read.
    card = build_card(out, CardInputs("t", {}, [f"0000{i}" for i in range(5)], options))
    assert card.totals["shards"] == 2 and "| shards | 2 of 5 registered |" in card.markdown


def test_a_shrunk_plan_is_reported_not_raised(four_shards: tuple[str, Any], tmp_path: Path) -> None:
    out, options = four_shards
    planned = tmp_path / "filtered.parquet"
    pq.write_table(pa.table({"url": [f"http://127.0.0.1/{i}.jpg" for i in range(12)]}), planned)
    plan = str(tmp_path / "plan")
    assert write_shard_inputs(str(planned), plan, 4) == ["00000", "00001", "00002"]

    report = verify_dataset(out, ["00000", "00001", "00002", "00003"], options, shard_inputs_folder=plan)
    in_plan = _problems(report, "shards_in_plan")
    assert "shard 00003 is registered but not in the plan" in in_plan
    # The other shards were downloaded from other rows than this plan's: not complete.
    assert "shard 00000 was built from another input (re-planned)" in _problems(report, "shards_complete")

    # Registered shards all in the plan, but shard 00003's files left in the folder.
    report = verify_dataset(out, ["00000", "00001", "00002"], options, shard_inputs_folder=plan)
    assert "shard 00003 is in the output folder but not in the plan" in _problems(report, "shards_in_plan")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """12 shards of 100 images, and 12 of 2 000."""
    folders = {}
    for images in (100, 2000):
        folders[images] = str(tmp_path_factory.mktemp(f"shards{images}"))
        write_synthetic_shards(folders[images], 12, images)
    return folders


@pytest.mark.parametrize("full", [False, True])
def test_verification_reads_the_same_files_whatever_the_images_per_shard(
    synthetic: dict[int, str], full: bool
) -> None:
    """12 shards of 2 000 images cost what 12 shards of 100 do: same files, same decodes.

    Wall and memory are measured by bench/bench_verify.py (not asserted here).
    """
    opened: dict[int, list[str]] = {}
    for images, folder in synthetic.items():
        output = OutputFolder(folder)
        output.fs = CountingFileSystem()
        options = local_options(number_sample_per_shard=images)
        report = verify_dataset(output, [f"{i:05d}" for i in range(12)], options, full_checksums=full)
        assert all(c.passed for c in report.checks.values()), report.checks
        assert report.rows == 12 * images and report.successes == 12 * images
        assert report.samples_decoded == DEEP_SAMPLE and report.shards_sampled == 12
        assert report.shards_hashed == (12 if full else CHECKSUM_SHARDS)
        assert report.short_sides == {"256": 12 * images}  # the card's histogram, from stats
        opened[images] = sorted(p.rsplit("/", 1)[1] for p in output.fs.opened)
    assert opened[100] == opened[2000]
    # One stats file per shard, each sampled shard's parquet and tar, the hashed shards' files.
    stats_files = [p for p in opened[100] if p.endswith("_stats.json")]
    assert len(stats_files) == 12
    assert len(opened[100]) == 12 + 2 * 12 + 2 * (12 if full else CHECKSUM_SHARDS)
