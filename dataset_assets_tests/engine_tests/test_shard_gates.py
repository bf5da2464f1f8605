"""Per-shard gates, the internal-error guard and the one-writer-per-shard lease, on real files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.records import FAILED_TO_DOWNLOAD, SUCCESS, SampleResult
from dataset_assets.engine.runner import already_done, download_shard, download_shards
from dataset_assets.engine.shards.gates import ShardGates, ShardRefused
from dataset_assets.engine.shards.lease import LEASE_TTL_S, ShardLease, ShardLeaseError, lease_name
from dataset_assets.engine.shards.writer import ShardWriter
from dataset_assets.io import storage
from dataset_assets.io.storage import OutputFolder
from dataset_assets_tests.conftest import NO_POLICY_FILES, local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer
from dataset_assets_tests.scale_fixtures import S3Server


def _writer(output: OutputFolder, count: int, **gates: float) -> ShardWriter:
    table = rows([f"http://127.0.0.1:9/{i}.jpg" for i in range(count)])
    lease = ShardLease.acquire(output, "00000")
    return ShardWriter(output, local_options(), 0, table, ShardGates(**gates), lease)


def _published(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "_tmp") + sorted(
        p.name for p in (folder / "_tmp").glob("*")
    )


def test_shard_with_too_many_internal_errors_is_not_committed(tmp_path: Path) -> None:
    output = OutputFolder(str(tmp_path))
    writer = _writer(output, 20)
    for i in range(20):
        message = "internal error: KeyError: 'width'" if i < 2 else "HTTP Error 404: Not Found"
        writer.add(SampleResult(0, i, FAILED_TO_DOWNLOAD, error_message=message))
    with pytest.raises(ShardRefused, match=r"shard 00000: 2 of 20 rows are internal errors.*KeyError"):
        writer.close()
    assert _published(tmp_path) == []  # no tar, parquet, stats, temporary file or lease left

    # One in twenty (5 %, not more) is committed.
    writer = _writer(output, 20)
    for i in range(20):
        message = "internal error: KeyError: 'width'" if i == 0 else "HTTP Error 404: Not Found"
        writer.add(SampleResult(0, i, FAILED_TO_DOWNLOAD, error_message=message))
    stats = writer.close()
    assert stats.passed_gates is True and (tmp_path / "00000_stats.json").exists()
    assert not (tmp_path / lease_name("00000")).exists()


def test_gates_judge_what_the_writer_saw(tmp_path: Path) -> None:
    output = OutputFolder(str(tmp_path))
    image = make_image(1, 64, 48, "jpg")
    writer = _writer(output, 3, success_rate_floor=0.5)
    writer.add(SampleResult(0, 0, SUCCESS, image=image, width=64, height=48))
    writer.add(SampleResult(0, 1, SUCCESS, image=image, width=50, height=48))  # recorded size lies
    writer.add(SampleResult(0, 1, FAILED_TO_DOWNLOAD, error_message="timed out"))  # row 1 twice, row 2 never
    stats = writer.close()
    failed = {name for name, gate in stats.gates.items() if not gate["passed"]}
    assert failed == {"shard_images_match_size", "shard_keys_unique"}
    assert "header says 64x48, recorded 50x48" in stats.gates["shard_images_match_size"]["summary"]
    assert "1 duplicate row(s), e.g. [1]" in stats.gates["shard_keys_unique"]["summary"]
    assert stats.passed_gates is False
    written = json.loads((tmp_path / "00000_stats.json").read_text())
    assert written["passed_gates"] is False and written["gates"] == stats.gates
    # Committed, but not complete: an incremental run downloads it again.
    assert not already_done(output, 0, local_options())
    # The committed files' sizes were compared with what was hashed while writing.
    assert stats.gates["shard_files_match_checksums"] == {"passed": True, "summary": "2 file(s) match"}
    assert stats.checksums["00000.tar"] and (tmp_path / "00000.tar").stat().st_size > 0


def test_zero_percent_shard_is_downloaded_again_once_its_host_is_back(
    image_server: ImageServer, tmp_path: Path
) -> None:
    """A shard whose host was down stays on disk but is not complete; the next run redoes it."""
    options = local_options(**NO_POLICY_FILES, retries=0)
    gates = ShardGates(success_rate_floor=0.5)
    output = OutputFolder(str(tmp_path))
    down = rows(["http://127.0.0.1:9/landscape.jpg"] * 2)  # port 9: nothing listens
    (first,) = download_shards([InputShard(0, down)], output, options, gates)
    assert first.successes == 0 and first.passed_gates is False
    assert not already_done(output, 0, options)
    up = rows([image_server.url("landscape.jpg"), image_server.url("portrait.jpg")])
    (second,) = download_shards([InputShard(0, up)], output, options, gates)
    assert not second.skipped and second.successes == 2 and second.passed_gates is True
    assert already_done(output, 0, options)


def test_a_live_lease_keeps_a_second_writer_out(image_server: ImageServer, tmp_path: Path) -> None:
    output = OutputFolder(str(tmp_path))
    holder = ShardLease.acquire(output, "00000")
    table = rows([image_server.url("landscape.jpg")])
    with pytest.raises(
        ShardLeaseError, match=r"shard 00000 is being written by another run: .*not writing it twice"
    ):
        download_shard(table, str(tmp_path), local_options(**NO_POLICY_FILES))
    assert image_server.stats.total_requests == 0  # refused before fetching anything
    assert not list(tmp_path.glob("00000*"))
    holder.check()  # still the holder's
    holder.release()
    assert download_shard(table, str(tmp_path), local_options(**NO_POLICY_FILES)).successes == 1


def test_stale_leases_are_taken_over(tmp_path: Path) -> None:
    output = OutputFolder(str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lease = ShardLease(output, "00000")
    stale = {"owner": "gone", "host": lease.host, "pid": int(dead.stdout), "expires_at": time.time() + 600}
    output.write_json_atomic(lease_name("00000"), stale)
    ShardLease.acquire(output, "00000").release()  # its process on this host is gone

    expired = {"owner": "elsewhere", "host": "other-host", "pid": 1, "expires_at": time.time() - 1}
    output.write_json_atomic(lease_name("00000"), expired)
    ShardLease.acquire(output, "00000").release()  # expired

    live = {"owner": "elsewhere", "host": "other-host", "pid": 1, "expires_at": time.time() + 600}
    output.write_json_atomic(lease_name("00000"), live)
    with pytest.raises(ShardLeaseError, match="elsewhere"):
        ShardLease.acquire(output, "00000")


def test_an_unreadable_lease_holds_its_shard_only_until_it_expires(tmp_path: Path) -> None:
    """An empty lease (what a writer killed between creating and writing it used to leave)
    must not lock its shard out of every later run."""
    output = OutputFolder(str(tmp_path))
    lease_file = tmp_path / lease_name("00000")
    lease_file.parent.mkdir(parents=True, exist_ok=True)
    lease_file.write_bytes(b"")
    with pytest.raises(ShardLeaseError, match=r"unknown \(unreadable lease\) \(expires in 1[12]\ds\)"):
        ShardLease.acquire(output, "00000")
    written_long_ago = time.time() - LEASE_TTL_S - 1
    os.utime(lease_file, (written_long_ago, written_long_ago))
    lease = ShardLease.acquire(output, "00000")
    assert json.loads(lease_file.read_text())["owner"] == lease.owner
    lease.release()


def test_an_exclusive_create_leaves_the_whole_file_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = OutputFolder(str(tmp_path))
    assert output.create_exclusive("_tmp/x.lease", b"first")
    assert not output.create_exclusive("_tmp/x.lease", b"second")
    assert (tmp_path / "_tmp" / "x.lease").read_bytes() == b"first"
    assert sorted(p.name for p in (tmp_path / "_tmp").iterdir()) == ["x.lease"]  # nothing staged left

    # A disk that fills up mid-write: an error, and no file under the name (an empty lease
    # would read as held).
    def full_disk(path: str, mode: str = "r", *args: object, **kwargs: object) -> object:
        Path(path).write_bytes(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "open", full_disk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        output.create_exclusive("_tmp/y.lease", b"whole")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "_tmp").iterdir()) == ["x.lease"]

    # A filesystem without hard links still gets an exclusive create, written whole.
    def no_links(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(storage.os, "link", no_links)
    assert output.create_exclusive("_tmp/z.lease", b"whole")
    assert not output.create_exclusive("_tmp/z.lease", b"other")
    assert (tmp_path / "_tmp" / "z.lease").read_bytes() == b"whole"


def test_a_writer_whose_lease_was_taken_over_publishes_nothing(
    image_server: ImageServer, tmp_path: Path
) -> None:
    table = rows([image_server.url("landscape.jpg"), image_server.url_for("/slow/2/portrait.jpg")])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            download_shard(table, str(tmp_path), local_options(**NO_POLICY_FILES))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    lease = tmp_path / lease_name("00000")
    deadline = time.monotonic() + 30
    while not lease.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    # Another run takes the shard over while this one downloads (e.g. after its lease expired).
    lease.write_text(
        json.dumps({"owner": "the other run", "host": "x", "pid": 1, "expires_at": time.time() + 600})
    )
    thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], ShardLeaseError)
    assert "taken over by the other run" in str(errors[0])
    assert not list(tmp_path.glob("00000*"))  # nothing of the shard was published
    assert json.loads(lease.read_text())["owner"] == "the other run"  # and its lease is left alone


def test_two_concurrent_writers_of_one_shard_cannot_both_commit(
    image_server: ImageServer, tmp_path: Path
) -> None:
    names = ["landscape.jpg", "portrait.jpg", "small.png", "photo.webp"]
    table = rows([image_server.url_for(f"/slow/4/{n}") for n in names], [f"caption {n}" for n in names])
    options = local_options(**NO_POLICY_FILES, caption_col="caption")
    outcomes: list[object] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            outcomes.append(download_shard(table, str(tmp_path), options))
        except ShardLeaseError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(type(o).__name__ for o in outcomes) == ["ShardLeaseError", "ShardStats"]
    # The committed shard is one writer's: its tar holds exactly the parquet's successes.
    with tarfile.open(tmp_path / "00000.tar") as tar:
        in_tar = {os.path.splitext(m.name)[0] for m in tar.getmembers()}
    in_parquet = {
        r["key"] for r in pq.read_table(tmp_path / "00000.parquet").to_pylist() if r["status"] == SUCCESS
    }
    assert in_tar == in_parquet and len(in_parquet) == 4
    assert not (tmp_path / lease_name("00000")).exists()


def test_the_lease_is_exclusive_on_s3(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    output = OutputFolder(f"s3://{bucket}/ds", s3_server.storage_options)
    first = ShardLease.acquire(output, "00000")
    with pytest.raises(ShardLeaseError, match="being written by another run"):
        ShardLease.acquire(output, "00000")
    first.renew()
    first.check()
    first.release()
    assert s3_server.keys(bucket) == []
    second = ShardLease.acquire(output, "00000")
    assert abs(output.modified_at(second.name) - time.time()) < 60  # S3's LastModified
    with pytest.raises(ShardLeaseError, match="lease was removed"):
        output.remove(second.name)
        second.check()
