"""`dataset-assets download` driven with img2dataset command lines, in real subprocesses."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_assets_tests.conftest import process_alive
from dataset_assets_tests.fakeweb.images import make_image
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
        "__len__",
        "_reports",
    ]  # and no empty _tmp folder left behind; no other *.json for img2dataset's scan to meet
    assert (out / "__len__").read_text() == "4\n"  # open_clip's total: the samples the tars hold
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
    assert not (out / "_tmp").exists()  # debris of the killed run was cleaned, then the empty folder


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


def _download(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--no_progress", *args], capture_output=True, text=True, timeout=120)


def _samples_json(tar_path: Path) -> list[dict]:
    with tarfile.open(tar_path) as tar:
        return [
            json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in sorted(tar.getmembers(), key=lambda m: m.name)
            if m.name.endswith(".json")
        ]


def test_metadata_keeps_the_input_url_text_and_column_types(tmp_path: Path) -> None:
    """Joins back to the source metadata need the URL as given and its columns' types."""
    with ImageServer(
        images={"été 2020.jpg": make_image(5, 64, 48, "jpg")}, config=ServerConfig(max_lifetime_s=120)
    ) as server:
        given = f" HTTP://127.0.0.1:{server.port}/img/%C3%A9t%C3%A9 2020.jpg#x"
        (tmp_path / "in.csv").write_text(
            f'url,caption,similarity,WIDTH\n"{given}",007,0.31,640\n"{given}#2",text,0.5,1024\n'
        )
        out = tmp_path / "out"
        done = _download(
            *("--url_list", str(tmp_path / "in.csv"), "--output_folder", str(out), "--input_format", "csv"),
            *("--caption_col", "caption", "--save_additional_columns", '["similarity","WIDTH"]'),
            *("--output_format", "webdataset", "--allow_private_addresses", "True"),
        )
        assert done.returncode == 0, done.stderr
        # what was requested is the normalised URL (no spaces, no fragment)
        assert server.stats.paths.count("/img/%C3%A9t%C3%A9%202020.jpg") == 2
    table = pq.read_table(out / "00000.parquet")
    assert table.schema.field("similarity").type == pa.float64()
    assert table.schema.field("WIDTH").type == pa.int64()
    assert table.schema.field("caption").type == pa.string()
    rows = table.to_pylist()
    assert [r["url"] for r in rows] == [given, f"{given}#2"]
    assert [r["status"] for r in rows] == ["success", "success"]
    assert [(r["similarity"], r["WIDTH"], r["caption"]) for r in rows] == [
        (0.31, 640, "007"),
        (0.5, 1024, "text"),
    ]
    meta = _samples_json(out / "00000.tar")
    assert [m["url"] for m in meta] == [given, f"{given}#2"]
    assert [(m["similarity"], m["WIDTH"], m["caption"]) for m in meta] == [
        (0.31, 640, "007"),
        (0.5, 1024, "text"),
    ]


def test_compute_hash_none_writes_no_hash(image_server: ImageServer, tmp_path: Path) -> None:
    _write_csv(tmp_path / "urls.csv", [image_server.url("small.png")])
    out = tmp_path / "out"
    done = subprocess.run(
        CLI + _img2dataset_args(tmp_path / "urls.csv", out, "--compute_hash", "None"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = pq.read_schema(out / "00000.parquet").names
    assert not {"md5", "sha256", "sha512"} & set(names), names
    (meta,) = _samples_json(out / "00000.tar")
    assert meta["status"] == "success"
    assert not {"md5", "sha256", "sha512"} & set(meta)


def test_txt_input_ignores_caption_col_like_img2dataset(image_server: ImageServer, tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text(image_server.url("small.png") + "\n")
    out = tmp_path / "out"
    done = _download(
        *("--url_list", str(tmp_path / "urls.txt"), "--output_folder", str(out), "--input_format", "txt"),
        *("--caption_col", "caption", "--output_format", "parquet", "--allow_private_addresses", "True"),
    )
    assert done.returncode == 0, done.stderr
    assert "note: --caption_col ignored" in done.stderr
    table = pq.read_table(out / "00000.parquet")
    assert table.column("status").to_pylist() == ["success"]
    assert "caption" not in table.column_names


def test_output_format_dummy_leaves_no_tmp_folder(image_server: ImageServer, tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text(image_server.url("small.png") + "\n")
    out = tmp_path / "out"
    done = _download(
        *("--url_list", str(tmp_path / "urls.txt"), "--output_folder", str(out), "--output_format", "dummy"),
        *("--allow_private_addresses", "True"),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00000_stats.json"]


def _truncated_parquet(path: Path) -> None:
    pq.write_table(pa.table({"url": [f"http://127.0.0.1/{i}.jpg" for i in range(1000)]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "input_format", "write", "expected"),
    [
        ("cut.parquet", "parquet", _truncated_parquet, "cut.parquet"),
        ("no_url.csv", "csv", lambda p: p.write_text("link,caption\nhttp://x/,c\n"), "url_col 'url'"),
        ("scalar.json", "json", lambda p: p.write_text('"just text"'), "expected a JSON array"),
        ("broken.json", "json", lambda p: p.write_text('{"url": {"0": "http://x/"'), "not valid JSON"),
        ("bad.csv.gz", "csv.gz", lambda p: p.write_bytes(b"not gzip"), "bad.csv.gz"),
        ("quote.csv", "csv", lambda p: p.write_text('url\n"http://x/\n'), "quote.csv"),
    ],
)
def test_bad_input_file_ends_with_one_line_naming_it(
    tmp_path: Path, name: str, input_format: str, write, expected: str
) -> None:
    path = tmp_path / name
    write(path)
    done = _download(
        *("--url_list", str(path), "--output_folder", str(tmp_path / "out"), "--input_format", input_format)
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and name in lines[0] and expected in lines[0], lines[0]


def test_unsupported_input_format_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "urls.xml").write_text("<urls/>")
    done = _download("--url_list", str(tmp_path / "urls.xml"), "--input_format", "xml")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "input_format='xml'" in done.stderr


def test_json_in_pandas_column_layout_downloads(image_server: ImageServer, tmp_path: Path) -> None:
    urls = [image_server.url("small.png"), image_server.url("landscape.jpg")]
    columns = {"url": {"0": urls[0], "1": urls[1]}, "caption": {"0": "a", "1": "b"}}
    (tmp_path / "urls.json.gz").write_bytes(gzip.compress(json.dumps(columns).encode()))
    out = tmp_path / "out"
    done = _download(
        *("--url_list", str(tmp_path / "urls.json.gz"), "--output_folder", str(out)),
        *("--input_format", "json.gz", "--caption_col", "caption", "--output_format", "parquet"),
        *("--allow_private_addresses", "True"),
    )
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out / "00000.parquet")
    assert table.column("url").to_pylist() == urls
    assert table.column("caption").to_pylist() == ["a", "b"]
    assert table.column("status").to_pylist() == ["success", "success"]


def test_url_blocklist_rows_are_never_requested_and_counted_as_opt_outs(
    image_server: ImageServer, tmp_path: Path
) -> None:
    port = image_server.port
    given = image_server.url("small.png")
    urls = [
        image_server.url("landscape.jpg"),  # not listed
        image_server.url("portrait.jpg"),  # listed as a URL, spelled otherwise
        given,  # listed as the sha256 of the URL as given
        f"http://cdn.img.blocked.test:{port}/img/photo.webp",  # a subdomain of a listed domain
        f"http://blocked.test:{port}/img/landscape.jpg?exact",  # the listed domain itself
    ]
    (tmp_path / "removals.txt").write_text(
        "# removal requests, one a line\n"
        f"HTTP://127.0.0.1:{port}/img/portrait.jpg#whatever\n"
        f"{hashlib.sha256(given.encode()).hexdigest()}\n"
        "\n"
        "blocked.test\n"
    )
    _write_csv(tmp_path / "urls.csv", urls)
    out = tmp_path / "out"
    done = subprocess.run(
        CLI
        + _img2dataset_args(tmp_path / "urls.csv", out, "--url_blocklist", str(tmp_path / "removals.txt")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    table = pa.concat_tables([pq.read_table(out / "00000.parquet"), pq.read_table(out / "00001.parquet")])
    got = {r["url"]: (r["status"], r["error_message"]) for r in table.to_pylist()}
    assert len(got) == len(urls)  # every input row is in the metadata
    assert got[urls[0]] == ("success", None)
    assert got[urls[1]] == ("failed_to_download", "blocked by url_blocklist (URL)")
    assert got[urls[2]] == ("failed_to_download", "blocked by url_blocklist (URL sha256)")
    assert got[urls[3]] == ("failed_to_download", "blocked by url_blocklist (domain blocked.test)")
    assert got[urls[4]] == ("failed_to_download", "blocked by url_blocklist (domain blocked.test)")
    opt_outs = [json.loads((out / f"0000{i}_stats.json").read_text())["opt_outs"] for i in (0, 1)]
    assert sum(o.get("blocklist", 0) for o in opt_outs) == 4
    # the only image requested (robots.txt and other site-wide files aside)
    assert [p for p in image_server.stats.paths if p.startswith("/img/")] == ["/img/landscape.jpg"]


def test_missing_url_blocklist_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    missing = tmp_path / "no-such-list.txt"
    done = _download(
        *("--url_list", str(tmp_path / "urls.txt"), "--output_folder", str(tmp_path / "out")),
        *("--url_blocklist", str(missing)),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: url_blocklist {missing} not found"]
    assert not (tmp_path / "out").exists()  # nothing was started
