from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.planning import read_manifest, write_shard_inputs


def _filtered(path: Path, n: int, tag: str = "") -> Path:
    pq.write_table(
        pa.table({"url": [f"http://h/{i}{tag}" for i in range(n)], "caption": [f"c{i}" for i in range(n)]}),
        path,
        row_group_size=7,  # row groups that do not line up with shards
    )
    return path


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per file: a rename-over gives a new inode even within one clock tick."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_shards_have_positional_rows(tmp_path: Path) -> None:
    src = _filtered(tmp_path / "filtered.parquet", 25)
    out = tmp_path / "shards"
    keys = write_shard_inputs(str(src), str(out), 10)
    assert keys == ["00000", "00001", "00002"]
    sizes = [pq.read_metadata(out / f"{k}.parquet").num_rows for k in keys]
    assert sizes == [10, 10, 5]
    assert pq.read_table(out / "00001.parquet").column("url").to_pylist() == [
        f"http://h/{i}" for i in range(10, 20)
    ]
    assert pq.read_schema(out / "00000.parquet").names == ["url", "caption"]
    manifest = read_manifest(str(out))
    assert manifest is not None
    assert manifest["shard_count"] == 3 and manifest["rows"] == 25
    assert [s["key"] for s in manifest["shards"]] == keys
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
        "_manifest.json",
    ]


def test_second_call_rewrites_nothing(tmp_path: Path) -> None:
    src = _filtered(tmp_path / "filtered.parquet", 25)
    out = tmp_path / "shards"
    write_shard_inputs(str(src), str(out), 10)
    before = _stamps(out)
    # A re-plan writes the same rows into a new file (new inode and mtime).
    src.unlink()
    _filtered(src, 25)
    assert write_shard_inputs(str(src), str(out), 10) == ["00000", "00001", "00002"]
    assert _stamps(out) == before


def test_only_changed_shards_are_rewritten_and_stale_ones_removed(tmp_path: Path) -> None:
    src = _filtered(tmp_path / "filtered.parquet", 25)
    out = tmp_path / "shards"
    write_shard_inputs(str(src), str(out), 10)
    before = _stamps(out)

    table = pq.read_table(src)
    urls = table.column("url").to_pylist()
    urls[12] = "http://changed/"
    pq.write_table(table.set_column(0, "url", pa.array(urls)), src)
    write_shard_inputs(str(src), str(out), 10)
    after = _stamps(out)
    assert after["00000.parquet"] == before["00000.parquet"]
    assert after["00002.parquet"] == before["00002.parquet"]
    assert after["00001.parquet"] != before["00001.parquet"]
    assert pq.read_table(out / "00001.parquet").column("url").to_pylist()[2] == "http://changed/"

    _filtered(src, 15)
    assert write_shard_inputs(str(src), str(out), 10) == ["00000", "00001"]
    assert not (out / "00002.parquet").exists()
    assert _stamps(out)["00000.parquet"] == before["00000.parquet"]
    assert read_manifest(str(out))["rows"] == 15


def test_damaged_or_foreign_shard_file_is_replaced(tmp_path: Path) -> None:
    src = _filtered(tmp_path / "filtered.parquet", 20)
    out = tmp_path / "shards"
    write_shard_inputs(str(src), str(out), 10)
    (out / "00001.parquet").write_bytes(b"truncated")
    pq.write_table(pa.table({"url": [f"http://h/{i}" for i in range(10)]}), out / "00000.parquet")
    (out / "00001.parquet.0123abcd.tmp").write_bytes(b"left by a killed run")
    write_shard_inputs(str(src), str(out), 10)
    assert not (out / "00001.parquet.0123abcd.tmp").exists()
    assert pq.read_table(out / "00001.parquet").num_rows == 10
    assert pq.read_schema(out / "00000.parquet").names == ["url", "caption"]


def test_naming_width_and_empty_input(tmp_path: Path) -> None:
    src = _filtered(tmp_path / "filtered.parquet", 3)
    assert write_shard_inputs(str(src), str(tmp_path / "s3"), 1, oom_shard_count=3) == ["000", "001", "002"]
    empty = _filtered(tmp_path / "empty.parquet", 0)
    assert write_shard_inputs(str(empty), str(tmp_path / "e"), 10) == []
    assert read_manifest(str(tmp_path / "e"))["shards"] == []


def test_read_manifest_absent_or_broken(tmp_path: Path) -> None:
    assert read_manifest(str(tmp_path)) is None
    (tmp_path / "_manifest.json").write_text("{not json")
    assert read_manifest(str(tmp_path)) is None
    (tmp_path / "_manifest.json").write_text(json.dumps({"format": 999}))
    assert read_manifest(str(tmp_path)) is None
    assert not os.path.exists(tmp_path / "missing" / "_manifest.json")
