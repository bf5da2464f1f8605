"""The shard runner end to end: real HTTP server on 127.0.0.1, real codec, real files."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from dataset_assets.engine.fingerprint import table_fingerprint
from dataset_assets.engine.politeness import worker_for
from dataset_assets.engine.runner import (
    COMPLETE,
    MISSING,
    REPLANNED,
    UNREADABLE,
    DownloadPool,
    InputShard,
    already_done,
    download_shard,
    shard_completion,
)
from dataset_assets.engine.shards.layout import compute_key
from dataset_assets.io.storage import OutputFolder
from dataset_assets_tests.conftest import local_options, process_alive, rows
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig


def _parquet(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_every_row_gets_a_status_and_message(image_server: ImageServer, tmp_path) -> None:
    urls = [
        image_server.url("landscape.jpg"),
        image_server.url_for("/status/404"),
        image_server.url_for("/slow/5/landscape.jpg"),
        image_server.url_for("/html"),
        image_server.url_for("/robots-tag/noai/landscape.jpg"),
        image_server.url_for("/robots-tag/otherbot%3A%20noai/landscape.jpg"),
        None,
        "ftp://127.0.0.1/x.jpg",
    ]
    options = local_options(caption_col="caption", timeout=1)
    stats = download_shard(
        rows(urls, [f"c{i}" for i in range(len(urls))]), str(tmp_path), options, shard_id=2
    )

    by_key = {r["key"]: r for r in _parquet(str(tmp_path / "00002.parquet"))}
    assert len(by_key) == len(urls)
    got = [
        (
            by_key[compute_key(i, 2, 10_000, 5)]["status"],
            by_key[compute_key(i, 2, 10_000, 5)]["error_message"],
        )
        for i in range(len(urls))
    ]
    assert got[0] == ("success", None)
    assert got[1] == ("failed_to_download", "HTTP Error 404: Not Found")
    assert got[2] == ("failed_to_download", "timed out after 1s (total deadline)")
    assert got[3] == ("failed_to_download", "not an image (text/html)")
    assert got[4] == ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive (noai)")
    assert got[5] == ("success", None)  # a directive for another crawler does not apply to us
    assert got[6] == ("failed_to_download", "missing URL")
    assert got[7][0] == "failed_to_download" and "scheme 'ftp'" in got[7][1]
    assert stats.count == 8 and stats.successes == 2 and stats.failed_to_download == 6
    assert stats.opt_outs == {"x-robots-tag": 1}  # the ledger: refusals by signal, nothing else
    assert sum(stats.status_dict.values()) == 8
    written = json.loads((tmp_path / "00002_stats.json").read_text())
    assert written["successes"] == 2 and written["count"] == 8


def test_webdataset_layout_reads_back_with_captions_and_hashes(
    image_server: ImageServer, test_images: dict[str, bytes], tmp_path
) -> None:
    names = ["landscape.jpg", "portrait.jpg", "small.png", "photo.webp"]
    captions = ["a wide one", "a tall one", None, "square"]
    table = rows([image_server.url(n) for n in names], captions, source_id=[10, 11, 12, 13])
    options = local_options(
        caption_col="caption", save_additional_columns=["source_id"], resize_mode="keep_ratio", image_size=128
    )
    download_shard(table, str(tmp_path), options, shard_id=0)

    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = tar.getmembers()
        assert {m.uname for m in members} == {"bigdata"} and {m.mode for m in members} == {0o444}
        assert sorted(m.name for m in members) == sorted(
            f"00000{i:04d}.{ext}" for i in range(4) for ext in ("jpg", "txt", "json")
        )
    samples = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False)}
    # Member order as webdataset's TarWriter (img2dataset's writer) gives it for the same samples.
    with wds.TarWriter(str(tmp_path / "reference.tar")) as reference:
        for key in dict.fromkeys(m.name.split(".")[0] for m in members):
            reference.write({k: v for k, v in samples[key].items() if k != "__url__"})
    with tarfile.open(tmp_path / "reference.tar") as tar:
        assert [m.name for m in members] == tar.getnames()
    assert samples["000000000"]["txt"] == b"a wide one"
    assert samples["000000002"]["txt"] == b""  # null caption -> empty file, as img2dataset
    meta = json.loads(samples["000000001"]["json"])
    assert list(meta)[:4] == ["source_id", "caption", "url", "key"]
    assert meta["source_id"] == 11 and meta["status"] == "success"
    assert (meta["original_width"], meta["original_height"]) == (300, 500)
    assert (meta["width"], meta["height"]) == (128, 213)  # keep_ratio: shorter side = 128
    decoded = cv2.imdecode(np.frombuffer(samples["000000001"]["jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (213, 128)

    records = {r["key"]: r for r in _parquet(str(tmp_path / "00000.parquet"))}
    for i, name in enumerate(names):
        assert records[f"00000{i:04d}"]["sha256"] == hashlib.sha256(test_images[name]).hexdigest()
    assert pq.read_schema(tmp_path / "00000.parquet").names == [
        "source_id",
        "caption",
        "url",
        "key",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "exif",
        "sha256",
    ]


@pytest.mark.parametrize("fmt", ["files", "parquet"])
def test_files_and_parquet_layouts(fmt: str, image_server: ImageServer, tmp_path) -> None:
    table = rows([image_server.url("landscape.jpg"), image_server.url_for("/status/410")], ["x", "y"])
    options = local_options(caption_col="caption", output_format=fmt, encode_format="webp", encode_quality=80)
    download_shard(table, str(tmp_path), options, shard_id=1)
    records = _parquet(str(tmp_path / "00001.parquet"))
    assert [r["status"] for r in sorted(records, key=lambda r: r["key"])] == ["success", "failed_to_download"]
    if fmt == "files":
        assert sorted(os.listdir(tmp_path / "00001")) == ["000010000.json", "000010000.txt", "000010000.webp"]
        data = (tmp_path / "00001" / "000010000.webp").read_bytes()
    else:
        by_key = {r["key"]: r for r in records}
        assert "txt" not in by_key["000010000"]
        assert by_key["000010001"]["webp"] is None
        data = by_key["000010000"]["webp"]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (256, 256)


def test_retries_only_transient_failures(tmp_path) -> None:
    with ImageServer(config=ServerConfig(max_lifetime_s=60)) as server:
        table = rows([server.url_for("/status/503"), server.url_for("/status/404")])
        download_shard(table, str(tmp_path), local_options(retries=2), shard_id=0)
        paths = server.stats.paths
    assert paths.count("/status/503") == 3
    assert paths.count("/status/404") == 1


def test_private_addresses_refused_by_default(image_server: ImageServer, tmp_path) -> None:
    table = rows([image_server.url("landscape.jpg"), "http://169.254.169.254/latest/meta-data"])
    stats = download_shard(table, str(tmp_path), local_options(allow_private_addresses=False), shard_id=0)
    messages = sorted(r["error_message"] for r in _parquet(str(tmp_path / "00000.parquet")))
    assert stats.successes == 0
    assert any("private address 127.0.0.1" in m for m in messages)
    assert any("link-local address 169.254.169.254" in m for m in messages)
    assert image_server.stats.total_requests == 0


def test_complete_shard_is_skipped_in_incremental_mode(image_server: ImageServer, tmp_path) -> None:
    table = rows([image_server.url("landscape.jpg")])
    first = download_shard(table, str(tmp_path), local_options(), shard_id=0)
    requests = image_server.stats.total_requests
    second = download_shard(table, str(tmp_path), local_options(), shard_id=0)
    assert not first.skipped and second.skipped and second.successes == 1
    assert image_server.stats.total_requests == requests


def test_a_shard_built_from_other_input_rows_is_not_complete(image_server: ImageServer, tmp_path) -> None:
    """The skip rule compares the fingerprint in the stats with the plan's (a re-plan)."""
    output = OutputFolder(str(tmp_path))
    table = rows([image_server.url("landscape.jpg"), image_server.url("portrait.jpg")])
    planned = table_fingerprint(table)
    options = local_options()

    def run(fingerprint: str | None, mode: str = "incremental") -> tuple[list, int]:
        image_server.reset_stats()
        with DownloadPool(options.replace(incremental_mode=mode), output) as pool:
            done = list(pool.run([InputShard(0, table, fingerprint)]))
        return done, len([p for p in image_server.stats.paths if p.startswith("/img/")])

    (first,), fetched = run(planned)
    assert fetched == 2 and first.input_fingerprint == planned
    assert shard_completion(output, 0, options, planned) == COMPLETE
    (second,), fetched = run(planned)
    assert second.skipped and fetched == 0  # same plan: left as it is

    replanned = "0" * 32
    assert shard_completion(output, 0, options, replanned) == REPLANNED
    assert not already_done(output, 0, options, replanned)
    assert already_done(output, 0, options)  # without the plan's fingerprint: img2dataset's rule
    # retry_failed must not keep "successes" of other rows: the shard is redone whole.
    (third,), fetched = run(replanned, mode="retry_failed")
    assert fetched == 2 and third.kept_from_previous_run == 0 and third.input_fingerprint == replanned

    (tmp_path / "00000_stats.json").write_text("{not json")
    assert shard_completion(output, 0, options, replanned) == UNREADABLE
    legacy = {**third.to_json(), "input_fingerprint": None}  # stats of an older version
    (tmp_path / "00000_stats.json").write_text(json.dumps(legacy))
    assert shard_completion(output, 0, options, planned) == COMPLETE
    assert shard_completion(OutputFolder(str(tmp_path / "empty")), 0, options, planned) == MISSING

    # Without a fingerprint from the caller the writer records the rows' own.
    assert download_shard(table, str(tmp_path / "direct"), options).input_fingerprint == planned


@pytest.mark.slow
def test_ten_thousand_rows_spread_over_two_processes(tmp_path) -> None:
    from dataset_assets_tests.fakeweb.images import make_image

    images = {f"{i}.jpg": make_image(i, 48 + i, 40 + i) for i in range(20)}
    # Rows go to the worker that owns their host, so a one-host list leaves the second process
    # only the image work the first one cannot keep up with, which depends on the machine's
    # speed. Eight hosts, four owned by each process (crc32 of 127.0.0.1..8 modulo 2), make the
    # split a property of the list instead.
    hosts = [f"127.0.0.{n}" for n in range(1, 9)]
    assert sorted(worker_for(f"http://{h}/", 2) for h in hosts) == [0] * 4 + [1] * 4
    config = ServerConfig(max_lifetime_s=300, extra_hosts=len(hosts) - 1)
    with ImageServer(images=images, config=config) as server:
        urls = [server.url(f"{i % 20}.jpg", host=hosts[i % len(hosts)]) for i in range(10_000)]
        options = local_options(processes_count=2, thread_count=64, image_size=32, output_format="parquet")
        stats = download_shard(rows(urls), str(tmp_path), options, shard_id=0)
    assert stats.count == 10_000 and stats.successes == 10_000
    assert len(stats.rows_per_worker) == 2
    assert min(stats.rows_per_worker.values()) > 1_000  # both processes did real work
    assert pq.read_metadata(tmp_path / "00000.parquet").num_rows == 10_000


def test_interrupt_terminates_workers_and_commits_nothing(tmp_path) -> None:
    with ImageServer(images={}, config=ServerConfig(max_lifetime_s=60)) as server:
        table = rows(
            [server.url_for("/status/404")] + [server.url_for(f"/slow/20/x{i}.jpg") for i in range(40)]
        )
        pool = DownloadPool(local_options(processes_count=2, timeout=30), str(tmp_path))

        def interrupt(_: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt), pool:
            pids = pool.worker_pids
            list(pool.run([InputShard(0, table)], on_progress=interrupt))
    assert len(pids) == 2
    for pid in pids:
        assert not process_alive(pid)
    assert not (tmp_path / "00000.tar").exists()
    assert not (tmp_path / "00000_stats.json").exists()
    assert os.listdir(tmp_path / "_tmp") == []


def test_retry_failed_refetches_only_failures_and_keeps_successes(tmp_path) -> None:
    from dataset_assets_tests.fakeweb.images import make_image

    images = {f"{i}.jpg": make_image(i, 90, 60) for i in range(6)}
    with ImageServer(images=dict(list(images.items())[:4]), config=ServerConfig(max_lifetime_s=60)) as server:
        table = rows([server.url(f"{i}.jpg") for i in range(6)], [f"c{i}" for i in range(6)])
        options = local_options(caption_col="caption")
        first = download_shard(table, str(tmp_path), options, shard_id=0)
        assert (first.successes, first.failed_to_download) == (4, 2)
        with tarfile.open(tmp_path / "00000.tar") as tar:
            before = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

        for name in ("4.jpg", "5.jpg"):  # the outage is over
            server.add_image(name, images[name])
        server.reset_stats()
        again = download_shard(
            table, str(tmp_path), options.replace(incremental_mode="retry_failed"), shard_id=0
        )
        fetched = [p for p in server.stats.paths if p.startswith("/img/")]

    assert sorted(fetched) == ["/img/4.jpg", "/img/5.jpg"]
    assert again.successes == 6 and again.kept_from_previous_run == 4 and again.count == 6
    with tarfile.open(tmp_path / "00000.tar") as tar:
        after = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert {k: v for k, v in after.items() if k in before} == before  # kept samples unchanged
    assert len(after) == 18
    records = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert sorted(r["key"] for r in records) == [f"00000{i:04d}" for i in range(6)]
    assert {r["status"] for r in records} == {"success"}
    assert json.loads((tmp_path / "00000_stats.json").read_text())["successes"] == 6
