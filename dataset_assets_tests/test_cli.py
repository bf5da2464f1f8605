"""`dataset-assets download` driven with img2dataset command lines, in real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from dataset_assets_tests.conftest import process_alive
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

CLI = [sys.executable, "-m", "dataset_assets.cli", "download"]


def _img2dataset_args(url_list: Path, output: Path, *extra: str) -> list[str]:
    # An img2dataset command line as users write it (python-fire syntax included),
    # plus the loopback permission these tests need.
    return [
        f"--url_list={url_list}",
        "--output_folder",
        str(output),
        "--input_format",
        "csv",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--image_size",
        "64",
        "--resize_mode",
        "border",
        "--processes_count",
        "1",
        "--thread_count",
        "8",
        "--number_sample_per_shard",
        "3",
        "--compute_hash",
        "md5",
        "--enable_wandb",
        "False",
        "--distributor",
        "multiprocessing",
        "--save_additional_columns",
        '["source"]',
        "--allow_private_addresses",
        "True",
        "--no_progress",
        *extra,
    ]


def _write_csv(path: Path, urls: list[str]) -> None:
    lines = ["url,caption,source"] + [f"{u},caption {i},s{i}" for i, u in enumerate(urls)]
    path.write_text("\n".join(lines) + "\n")


def test_img2dataset_command_line_gives_img2dataset_layout(image_server: ImageServer, tmp_path: Path) -> None:
    urls = [image_server.url("landscape.jpg")] * 4 + [image_server.url_for("/status/404")]
    _write_csv(tmp_path / "urls.csv", urls)
    out = tmp_path / "out"
    done = subprocess.run(
        CLI + _img2dataset_args(tmp_path / "urls.csv", out), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "note: --enable_wandb ignored" in done.stderr
    assert "4/5 images" in done.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "00001.parquet",
        "00001.tar",
        "00001_stats.json",
        "_tmp",
    ]
    table = pq.read_table(out / "00001.parquet")
    assert table.column_names == [
        "source",
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
        "md5",
    ]
    assert sorted(table.column("key").to_pylist()) == ["000010", "000011"]  # nsps=3 -> 1 row digit


def test_unknown_choice_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1/x.jpg\n")
    done = subprocess.run(
        [*CLI, "--url_list", str(tmp_path / "urls.txt"), "--resize_mode", "stretch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "resize_mode='stretch'" in done.stderr


def test_kill_9_leaves_no_complete_shard_and_rerun_completes(test_images, tmp_path: Path) -> None:
    with ImageServer(
        images=test_images, config=ServerConfig(latency_s=(0.5, 0.8), max_lifetime_s=120)
    ) as server:
        _write_csv(tmp_path / "urls.csv", [server.url("portrait.jpg")] * 6)
        out = tmp_path / "out"
        args = CLI + _img2dataset_args(tmp_path / "urls.csv", out, "--thread_count", "1")
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.stats.total_requests < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _children(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

        assert server.stats.total_requests >= 2, "the download never started"
        assert workers, "the CLI had no worker process"
        deadline = time.monotonic() + 10
        while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(process_alive(pid) for pid in workers), "worker outlived its killed parent"
        visible = sorted(p.name for p in out.iterdir() if p.name != "_tmp")
        assert visible == [], f"a killed run left complete-looking files: {visible}"

        rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json"]
    assert sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet")) == 6
    assert list((out / "_tmp").iterdir()) == []  # debris of the killed run was cleaned


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except FileNotFoundError:
            return []
        children = [int(c) for c in text.split()]
        # multiprocessing's spawn starts a resource tracker first; wait for real workers too
        if len(children) >= 2:
            return children
        time.sleep(0.05)
    return []
