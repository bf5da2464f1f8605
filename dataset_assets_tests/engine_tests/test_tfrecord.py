"""output_format tfrecord: img2dataset's layout, written without TensorFlow, read by other readers."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_loader

from dataset_assets.engine.runner import download_shard
from dataset_assets.engine.shards import tfrecord as tfr
from dataset_assets.engine.shards.formats import ShardReadError
from dataset_assets.io.storage import OutputFolder
from dataset_assets.reporting.verify import verify_dataset
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig


def test_example_encoding_is_what_protobuf_parses() -> None:
    record = tfr.encode_example(
        {
            "key": "000010000",
            "jpg": b"\xff\xd8 bytes",
            "width": 256,
            "offset": -3,
            "done": True,
            "similarity": 0.25,
            "scores": [0.5, 1.5],
            "ids": [1, 300],
            "tags": ["a", "b"],
            "error_message": None,
        }
    )
    parsed = example_pb2.Example.FromString(record).features.feature
    assert parsed["key"].bytes_list.value == [b"000010000"]
    assert parsed["jpg"].bytes_list.value == [b"\xff\xd8 bytes"]
    assert parsed["width"].int64_list.value == [256]
    assert parsed["offset"].int64_list.value == [-3]
    assert parsed["done"].int64_list.value == [1]
    assert parsed["similarity"].float_list.value == [0.25]
    assert list(parsed["scores"].float_list.value) == [0.5, 1.5]
    assert parsed["ids"].int64_list.value == [1, 300]
    assert parsed["tags"].bytes_list.value == [b"a", b"b"]
    assert parsed["error_message"].bytes_list.value == [b""]
    assert tfr.decode_example(record)["offset"] == [-3]  # our reader agrees with protobuf's


def test_tfrecord_shard_reads_back_with_an_independent_reader(
    image_server: ImageServer, test_images: dict[str, bytes], tmp_path
) -> None:
    names = ["landscape.jpg", "portrait.jpg", "small.png"]
    urls = [image_server.url(n) for n in names] + [image_server.url_for("/status/410")]
    table = rows(urls, ["a wide one", "a tall one", None, "gone"], source_id=[10, 11, 12, 13])
    options = local_options(
        output_format="tfrecord", caption_col="caption", save_additional_columns=["source_id"], image_size=64
    )
    stats = download_shard(table, str(tmp_path), options, shard_id=1)
    assert stats.successes == 3 and stats.count == 4
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == [
        "00001.parquet",
        "00001.tfrecord",
        "00001_stats.json",
    ]
    description = {
        "key": "byte",
        "jpg": "byte",
        "txt": "byte",
        "source_id": "int",
        "width": "int",
        "url": "byte",
    }
    samples = {
        bytes(s["key"]).decode(): s
        for s in tfrecord_loader(str(tmp_path / "00001.tfrecord"), None, description)
    }
    assert sorted(samples) == ["000010000", "000010001", "000010002"]  # failures are parquet-only
    first = samples["000010000"]
    assert bytes(first["txt"]) == b"a wide one" and int(first["source_id"][0]) == 10
    assert bytes(samples["000010002"]["txt"]) == b""  # null caption, as img2dataset writes it
    assert bytes(first["url"]).decode() == urls[0]
    image = cv2.imdecode(np.frombuffer(bytes(first["jpg"]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (64, 64) and int(first["width"][0]) == 64

    records = {r["key"]: r for r in pq.read_table(tmp_path / "00001.parquet").to_pylist()}
    assert records["000010003"]["status"] == "failed_to_download"
    assert records["000010001"]["sha256"] == hashlib.sha256(test_images["portrait.jpg"]).hexdigest()
    checksums = json.loads((tmp_path / "00001_stats.json").read_text())["checksums"]
    assert (
        checksums["00001.tfrecord"] == hashlib.sha256((tmp_path / "00001.tfrecord").read_bytes()).hexdigest()
    )

    report = verify_dataset(str(tmp_path), ["00001"], options)
    assert report.samples_decoded == 3
    assert all(check.passed for check in report.checks.values()), report.checks


def test_retry_failed_keeps_tfrecord_successes_and_truncation_is_reported(tmp_path) -> None:
    images = {f"{i}.jpg": make_image(i, 90, 60) for i in range(4)}
    with ImageServer(images=dict(list(images.items())[:2]), config=ServerConfig(max_lifetime_s=60)) as server:
        table = rows([server.url(f"{i}.jpg") for i in range(4)], [f"c{i}" for i in range(4)])
        options = local_options(output_format="tfrecord", caption_col="caption")
        assert download_shard(table, str(tmp_path), options, shard_id=0).successes == 2
        for name in ("2.jpg", "3.jpg"):
            server.add_image(name, images[name])
        server.reset_stats()
        again = download_shard(
            table, str(tmp_path), options.replace(incremental_mode="retry_failed"), shard_id=0
        )
        fetched = sorted(p for p in server.stats.paths if p.startswith("/img/"))
    assert fetched == ["/img/2.jpg", "/img/3.jpg"]  # the two kept ones came from the tfrecord
    assert again.successes == 4 and again.kept_from_previous_run == 2

    path = tmp_path / "00000.tfrecord"
    path.write_bytes(path.read_bytes()[:-100])  # truncated in the last record
    fmt_reader = tfr.TFRecordFormat()
    with pytest.raises(ShardReadError, match=r"00000\.tfrecord: truncated record"):
        list(fmt_reader.read_samples(OutputFolder(str(tmp_path)), "00000", "jpg"))
    report = verify_dataset(str(tmp_path), ["00000"], options)
    assert not report.checks["samples_decode"].passed
    assert any("00000.tfrecord: truncated record" in p for p in report.checks["samples_decode"].problems)
    assert not report.checks["checksums_match"].passed
