"""The output as trainers load it: webdataset, Hugging Face ``datasets``, open_clip's length rule.

Real shards from a loopback image server, read back with the trainers' own readers; open_clip
itself pulls torch, so its ``get_dataset_size`` rule is restated here (:func:`open_clip_size`).
"""

from __future__ import annotations

import ast
import json
import os
import tarfile
from pathlib import Path

# Read when datasets is imported: the loader must never reach for the Hub (loopback only).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import datasets
import pytest
import webdataset as wds

from dataset_assets.engine.download import download
from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.runner import download_shards
from dataset_assets.engine.shards.huggingface import huggingface_features
from dataset_assets.engine.shards.layout import compute_key
from dataset_assets.engine.shards.sample_counts import publish_sample_counts
from dataset_assets.io.storage import OutputFolder
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.server import ImageServer


def open_clip_size(shards: list[str]) -> int | None:
    """open_clip's rule: sizes.json beside the first shard, summed over the shards' basenames
    (a shard missing from it is a KeyError); else the int literal in ``__len__``; else unknown."""
    folder = os.path.dirname(shards[0])
    sizes_path, len_path = os.path.join(folder, "sizes.json"), os.path.join(folder, "__len__")
    if os.path.exists(sizes_path):
        with open(sizes_path) as handle:
            sizes = json.load(handle)
        return sum(int(sizes[os.path.basename(shard)]) for shard in shards)
    if os.path.exists(len_path):
        with open(len_path) as handle:
            return ast.literal_eval(handle.read())
    return None


def _members(tar_path: Path) -> dict[str, set[str]]:
    """Sample key -> the extensions of its members, in one tar."""
    found: dict[str, set[str]] = {}
    with tarfile.open(tar_path) as tar:
        for name in tar.getnames():
            key, _, extension = name.partition(".")
            found.setdefault(key, set()).add(extension)
    return found


def _two_shards(server: ImageServer, out: Path, **overrides: object) -> None:
    """Shard 0: three images, a 404 and a null caption; shard 1: two images, one not an image."""
    first = rows(
        [
            server.url("landscape.jpg"),
            server.url_for("/status/404"),
            server.url("small.png"),
            server.url("photo.webp"),
        ],
        ["a wide one", "gone", None, "square"],
    )
    second = rows([server.url("portrait.jpg"), server.url_for("/html")], ["tall", None])
    options = local_options(caption_col="caption", **overrides)
    list(download_shards([InputShard(0, first), InputShard(1, second)], str(out), options))


def test_sizes_json_and_len_give_open_clip_the_samples_the_tars_hold(
    image_server: ImageServer, tmp_path: Path
) -> None:
    _two_shards(image_server, tmp_path, sizes_json=True)
    tars = [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
    held = {os.path.basename(t): sum(1 for _ in wds.WebDataset(t, shardshuffle=False)) for t in tars}
    assert held == {"00000.tar": 3, "00001.tar": 1}  # only successes are in a tar
    assert json.loads((tmp_path / "sizes.json").read_text()) == held  # basenames -> ints
    assert open_clip_size(tars) == 4 and open_clip_size(tars[1:]) == 1
    assert ast.literal_eval((tmp_path / "__len__").read_text()) == 4
    # The root holds shard files and the trainers' files only: img2dataset's *.json scan parses
    # every name but sizes.json (which is why it is an option).
    roots = sorted(p.name for p in tmp_path.glob("*.json") if p.name != "sizes.json")
    assert [int(name.split("_")[0]) for name in roots] == [0, 1]


def test_len_alone_by_default_and_a_stale_sizes_json_is_removed(
    image_server: ImageServer, tmp_path: Path
) -> None:
    (tmp_path / "sizes.json").write_text('{"00000.tar": 99}')  # from an earlier run with the option
    _two_shards(image_server, tmp_path)
    assert not (tmp_path / "sizes.json").exists()  # open_clip would prefer it to __len__
    assert open_clip_size([str(tmp_path / "00000.tar")]) == 4  # __len__: the whole dataset


def test_counts_follow_replaced_shards_and_read_only_changed_stats(
    image_server: ImageServer, tmp_path: Path
) -> None:
    _two_shards(image_server, tmp_path, sizes_json=True)
    output = OutputFolder(str(tmp_path))
    options = local_options(caption_col="caption", sizes_json=True)
    stats = tmp_path / "00001_stats.json"
    # Same size, inode and mtime as the cache remembers: the file is not read again.
    before = os.stat(stats)
    text = stats.read_text()
    assert '"successes": 1,' in text
    stats.write_text(text.replace('"successes": 1,', '"successes": 7,'))
    os.utime(stats, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert publish_sample_counts(output, options).sizes == {"00000.tar": 3, "00001.tar": 1}
    # Replaced (a new mtime): read again.
    os.utime(stats, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert publish_sample_counts(output, options).sizes == {"00000.tar": 3, "00001.tar": 7}
    # A shard no longer complete leaves the counts; an unreadable stats file is reported.
    (tmp_path / "00000_stats.json").write_text("{not json")
    counts = publish_sample_counts(output, options)
    assert counts.sizes == {"00001.tar": 7} and counts.unreadable == ["00000_stats.json"]
    assert (tmp_path / "__len__").read_text() == "7\n"
    (tmp_path / "00000_stats.json").unlink()
    assert publish_sample_counts(output, options).unreadable == []


def test_cli_download_publishes_counts(image_server: ImageServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "\n".join([image_server.url("landscape.jpg")] * 3 + [image_server.url_for("/status/500")])
    )
    download(str(urls), str(tmp_path / "out"), local_options(number_sample_per_shard=2, sizes_json=True))
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 1}
    assert (tmp_path / "out" / "__len__").read_text() == "3\n"


def test_every_sample_has_the_same_members_and_dotless_digit_keys(
    image_server: ImageServer, tmp_path: Path
) -> None:
    _two_shards(image_server, tmp_path)
    for tar in ("00000.tar", "00001.tar"):
        members = _members(tmp_path / tar)
        assert members and all(m == {"jpg", "json", "txt"} for m in members.values()), members
        assert all(key.isdigit() for key in members)  # webdataset splits a key at its first dot
    assert compute_key(9_999, 123_456, 10_000, 5).isdigit()  # more shards than oom digits: still digits


def test_without_caption_column_no_sample_has_a_txt(image_server: ImageServer, tmp_path: Path) -> None:
    table = rows([image_server.url("landscape.jpg"), image_server.url("portrait.jpg")])
    list(download_shards([InputShard(0, table)], str(tmp_path), local_options()))
    assert set(map(frozenset, _members(tmp_path / "00000.tar").values())) == {frozenset({"jpg", "json"})}
    loaded = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(tmp_path / "00000.tar")},
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert loaded.num_rows == 2 and "txt" not in loaded.features
    assert sorted(loaded["__key__"]) == ["000000000", "000000001"]
    declared = huggingface_features(str(tmp_path), local_options())
    assert set(declared) == set(loaded.features)


@pytest.mark.timeout(120)
def test_huggingface_datasets_loads_null_captions_before_a_caption(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """The first five samples' captions are null (the slow one comes last in the tar), so the
    loader's guess would type caption null; the declared features load every sample."""
    urls = [image_server.url("landscape.jpg")] * 6 + [image_server.url_for("/slow/1/portrait.jpg")]
    captions: list[str | None] = [None] * 6 + ["a late caption"]
    options = local_options(caption_col="caption")
    list(download_shards([InputShard(0, rows(urls, captions))], str(tmp_path), options))
    first = [json.loads(s["json"]) for s in wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False)][
        :5
    ]
    assert [m["caption"] for m in first] == [None] * 5  # what the loader would infer from
    loaded = datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(tmp_path / "00000.tar")]},
        split="train",
        features=huggingface_features(str(tmp_path), options),
        cache_dir=str(tmp_path / "hf"),
    )
    assert loaded.num_rows == 7
    by_key = {row["__key__"]: row for row in loaded}
    assert by_key["000000006"]["txt"] == "a late caption"
    assert by_key["000000006"]["json"]["caption"] == "a late caption"
    assert by_key["000000000"]["txt"] == "" and by_key["000000000"]["json"]["caption"] is None
    assert by_key["000000006"]["jpg"].size == (256, 256)  # decoded by datasets' Image feature
