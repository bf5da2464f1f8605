from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.reader import count_rows, iter_input_shards
from dataset_assets.io.sources import InputError, input_columns, list_input_files, source_sql

ROWS = [
    {"url": "http://example.com/a.jpg", "caption": "first, with comma", "score": 10},
    {"url": "  https://example.com/b.png  ", "caption": 'second "quoted"', "score": 20},
    {"url": "http://example.com/c.jpg?x=1&y=2", "caption": "third", "score": 30},
    {"url": "http://example.com/d.jpg", "caption": "fourth", "score": 40},
    {"url": "http://example.com/e.jpg", "caption": "fifth", "score": 50},
]
EXPECTED_URLS = [r["url"] for r in ROWS]  # as given, spaces included: the engine trims what it requests


def _write(path: Path, fmt: str, rows: list[dict]) -> Path:
    base, _, gz = fmt.partition(".")
    if base == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if base == "txt":
        text = "".join(r["url"] + "\n" for r in rows)
    elif base in ("csv", "tsv"):
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="," if base == "csv" else "\t")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    elif base == "json":
        text = json.dumps(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _shards(url_list, **opts):
    return list(iter_input_shards(url_list, DownloadOptions(**opts)))


FORMATS = [
    "txt",
    "txt.gz",
    "csv",
    "csv.gz",
    "tsv",
    "tsv.gz",
    "json",
    "json.gz",
    "jsonl",
    "jsonl.gz",
    "parquet",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_rows(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"input.{fmt}", fmt, ROWS)
    caption = None if fmt.startswith("txt") else "caption"
    shards = _shards(str(path), input_format=fmt, caption_col=caption, number_sample_per_shard=100)
    assert [s.shard_id for s in shards] == [0]
    table = shards[0].table
    assert table.column("url").to_pylist() == EXPECTED_URLS
    assert table.column_names[0] == "url"
    if caption:
        assert table.column("caption").to_pylist() == [r["caption"] for r in ROWS]
        assert table.column_names == ["url", "caption"]
    assert count_rows(str(path), DownloadOptions(input_format=fmt)) == len(ROWS)


def test_additional_columns_keep_requested_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "input.jsonl", "jsonl", ROWS)
    (shard,) = _shards(
        str(path),
        input_format="jsonl",
        url_col="URL",
        save_additional_columns=["score"],
        caption_col="caption",
    )
    assert shard.table.column_names == ["url", "caption", "score"]
    assert shard.table.column("score").to_pylist() == [10, 20, 30, 40, 50]


def test_txt_keeps_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    lines = [
        "http://a.com/x,y.jpg",
        'http://a.com/"quoted".jpg',
        "http://a.com/tab\there.jpg",
        "http://a.com/'single'.jpg",
        '"http://a.com/starts-with-quote.jpg"',
    ]
    path.write_text("\r\n".join(lines) + "\r\n\r\n")
    (shard,) = _shards(str(path), input_format="txt")
    assert shard.table.column("url").to_pylist() == lines


def test_null_and_blank_urls_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "input.parquet"
    pq.write_table(pa.table({"url": ["http://a/", None, "   ", "http://b/"]}), path)
    (shard,) = _shards(str(path), input_format="parquet")
    assert shard.table.column("url").to_pylist() == ["http://a/", None, "   ", "http://b/"]


def test_slicing_and_key_order(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    urls = [f"http://h/{i}" for i in range(8)]
    path.write_text("\n".join(urls))
    shards = _shards(str(path), input_format="txt", number_sample_per_shard=3)
    assert [s.shard_id for s in shards] == [0, 1, 2]
    assert [s.table.column("url").to_pylist() for s in shards] == [urls[0:3], urls[3:6], urls[6:8]]


def test_folder_shards_do_not_span_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.txt").write_text("\n".join(f"http://b/{i}" for i in range(4)))
    (folder / "a.txt").write_text("\n".join(f"http://a/{i}" for i in range(5)))
    (folder / "ignored.csv").write_text("url\nhttp://x/\n")
    assert [Path(p).name for p in list_input_files(str(folder), "txt")] == ["a.txt", "b.txt"]
    shards = _shards(str(folder), input_format="txt", number_sample_per_shard=3)
    assert [s.shard_id for s in shards] == [0, 1, 2, 3]
    assert [s.table.num_rows for s in shards] == [3, 2, 3, 1]
    assert shards[1].table.column("url").to_pylist() == ["http://a/3", "http://a/4"]
    assert shards[2].table.column("url").to_pylist()[0] == "http://b/0"
    with_start = list(
        iter_input_shards(str(folder), DownloadOptions(number_sample_per_shard=3), start_shard_id=10)
    )
    assert [s.shard_id for s in with_start] == [10, 11, 12, 13]


def test_list_of_files_and_missing_inputs(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("http://a/\n")
    b = tmp_path / "b.txt"
    b.write_text("http://b/\n")
    assert list_input_files([str(b), str(a)], "txt") == [str(b), str(a)]
    with pytest.raises(InputError, match="does not exist"):
        list_input_files(str(tmp_path / "nope.txt"), "txt")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no \*\.parquet files"):
        list_input_files(str(empty), "parquet")


def test_skip(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, n in (("a", 7), ("b", 4)):
        pq.write_table(
            pa.table({"url": [f"http://{name}/{i}" for i in range(n)]}), folder / f"{name}.parquet"
        )
    opts = DownloadOptions(input_format="parquet", number_sample_per_shard=3)
    asked: list[int] = []

    def skip(shard_id: int) -> bool:
        asked.append(shard_id)
        return shard_id in (0, 2, 3, 4)

    shards = list(iter_input_shards(str(folder), opts, skip=skip))
    assert [s.shard_id for s in shards] == [1]
    assert shards[0].table.column("url").to_pylist() == ["http://a/3", "http://a/4", "http://a/5"]
    assert set(asked) == {0, 1, 2, 3, 4}
    # Text input takes the streaming path for skipped shards.
    (tmp_path / "t.txt").write_text("\n".join(f"http://t/{i}" for i in range(7)))
    shards = list(
        iter_input_shards(str(tmp_path / "t.txt"), opts.replace(input_format="txt"), skip=lambda i: i != 2)
    )
    assert [(s.shard_id, s.table.column("url").to_pylist()) for s in shards] == [(2, ["http://t/6"])]


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "input.csv", "csv", ROWS)
    with pytest.raises(InputError) as err:
        _shards(str(path), input_format="csv", caption_col="text")
    message = str(err.value)
    assert "'text'" in message and "input.csv" in message and "url, caption, score" in message
    with pytest.raises(InputError, match="verify_hash column 'sha256'"):
        _shards(str(path), input_format="csv", verify_hash=["sha256", "sha256"])
    with pytest.raises(InputError, match="url_col 'link'"):
        _shards(str(path), input_format="csv", url_col="link")


@pytest.mark.parametrize(
    ("fmt", "content"), [("txt", ""), ("csv", ""), ("csv", "url,caption\n"), ("jsonl", "")]
)
def test_empty_input(tmp_path: Path, fmt: str, content: str) -> None:
    path = tmp_path / f"input.{fmt}"
    path.write_text(content)
    with pytest.raises(InputError, match="contains no rows"):
        _shards(str(path), input_format=fmt)


def test_empty_file_among_others_gives_no_shard(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("http://b/\n")
    assert [s.shard_id for s in _shards(str(tmp_path), input_format="txt")] == [0]


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet" * 50)
    with pytest.raises(InputError, match=r"broken\.parquet"):
        _shards(str(path), input_format="parquet")


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(b"not gzip at all\n" * 10)
    with pytest.raises(InputError, match=r"broken\.txt\.gz"):
        _shards(str(path), input_format="txt.gz")


def test_error_in_the_middle_of_a_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    lines = ["url,caption"] + [f"http://h/{i},cap" for i in range(50_000)] + ['http://h/x,"unterminated']
    path.write_text("\n".join([*lines, "http://h/y,cap"]) + "\n")
    shards = []
    with pytest.raises(InputError, match=r"bad\.csv"):
        shards.extend(
            iter_input_shards(str(path), DownloadOptions(input_format="csv", number_sample_per_shard=1000))
        )


def test_source_sql_and_input_columns_quote_paths(tmp_path: Path) -> None:
    path = tmp_path / "it's here.jsonl"
    _write(path, "jsonl", ROWS)
    sql = source_sql(str(path), "jsonl")
    assert "it''s here" in sql
    con = duckdb.connect()
    assert input_columns(con, str(path), "jsonl") == ["url", "caption", "score"]
    assert con.execute(f"SELECT count(*) FROM {sql}").fetchone() == (5,)


def test_text_columns_do_not_fail_on_late_type_change(tmp_path: Path) -> None:
    """DuckDB's sniffer samples; a non-number after 20k numbers must not abort the read."""
    path = tmp_path / "input.csv"
    lines = ["url,score"] + [f"http://h/{i},{i}" for i in range(30_000)] + ["http://h/last,unknown"]
    path.write_text("\n".join(lines) + "\n")
    shards = _shards(str(path), input_format="csv", save_additional_columns=["score"])
    assert sum(s.table.num_rows for s in shards) == 30_001
    assert shards[-1].table.column("score").to_pylist()[-1] == "unknown"


def test_large_parquet_streams_in_order(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    n = 200_000
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'http://host' || (i % 97) || '.com/' || i AS url, 'caption ' || i AS caption "
        f"FROM range({n}) t(i)) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 30000)"
    )
    nsps = 7_000
    opts = DownloadOptions(input_format="parquet", number_sample_per_shard=nsps, caption_col="caption")
    start = time.perf_counter()
    expected_id = 0
    next_row = 0
    for shard in iter_input_shards(str(path), opts):
        assert shard.shard_id == expected_id
        assert shard.table.num_rows <= nsps
        urls = shard.table.column("url").to_pylist()
        assert urls == [f"http://host{i % 97}.com/{i}" for i in range(next_row, next_row + len(urls))]
        next_row += len(urls)
        expected_id += 1
    assert next_row == n
    assert expected_id == -(-n // nsps)
    assert time.perf_counter() - start < 30
    assert count_rows(str(path), opts) == n


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz"])
def test_extra_columns_keep_their_inferred_types(tmp_path: Path, fmt: str) -> None:
    """As img2dataset's pandas reader: numbers stay numbers, dates stay text; url and caption are
    text whatever they look like."""
    rows = [
        {"url": "1", "caption": "007", "similarity": 0.31, "WIDTH": 640, "day": "2020-01-01", "ok": "true"},
        {"url": "2", "caption": "text", "similarity": 1, "WIDTH": "", "day": "2020-01-02", "ok": "false"},
    ]
    path = _write(tmp_path / f"input.{fmt}", fmt, rows)
    (shard,) = _shards(
        str(path),
        input_format=fmt,
        caption_col="caption",
        save_additional_columns=["similarity", "WIDTH", "day", "ok"],
    )
    table = shard.table
    assert [table.schema.field(n).type for n in table.column_names] == [
        pa.string(),
        pa.string(),
        pa.float64(),
        pa.int64(),
        pa.string(),
        pa.bool_(),
    ]
    assert table.to_pylist() == [
        {"url": "1", "caption": "007", "similarity": 0.31, "WIDTH": 640, "day": "2020-01-01", "ok": True},
        {"url": "2", "caption": "text", "similarity": 1.0, "WIDTH": None, "day": "2020-01-02", "ok": False},
    ]


def _json_layouts(rows: list[dict]) -> dict[str, str]:
    names = list(rows[0])
    # pandas' DataFrame.to_json(): an object of columns keyed by index label; here the second
    # column lists its labels in another order, which must not reorder or misalign rows.
    columns = {n: {str(i): r[n] for i, r in enumerate(rows)} for n in names}
    columns[names[1]] = dict(reversed(list(columns[names[1]].items())))
    return {
        "records": json.dumps(rows),
        "columns": json.dumps(columns),
        "lines": "".join(json.dumps(r) + "\n" for r in rows),
    }


@pytest.mark.parametrize("fmt", ["json", "json.gz"])
@pytest.mark.parametrize("layout", ["records", "columns", "lines"])
def test_json_layouts_give_the_same_rows(tmp_path: Path, fmt: str, layout: str) -> None:
    text = _json_layouts(ROWS)[layout]
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(gzip.compress(text.encode()) if fmt.endswith(".gz") else text.encode())
    opts = {"input_format": fmt, "caption_col": "caption", "save_additional_columns": ["score"]}
    (shard,) = _shards(str(path), **opts)
    assert shard.table.column("url").to_pylist() == EXPECTED_URLS
    assert shard.table.column("caption").to_pylist() == [r["caption"] for r in ROWS]
    assert shard.table.column("score").to_pylist() == [r["score"] for r in ROWS]
    assert shard.table.schema.field("score").type == pa.int64()
    assert count_rows(str(path), DownloadOptions(**opts)) == len(ROWS)


def test_json_column_layout_with_missing_labels_and_mixed_values(tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text(
        json.dumps(
            {"url": {"0": "http://a/", "1": "http://b/"}, "n": {"1": 2.5}, "mixed": {"0": 1, "1": "x"}}
        )
    )
    (shard,) = _shards(str(path), input_format="json", save_additional_columns=["n", "mixed"])
    assert shard.table.to_pylist() == [
        {"url": "http://a/", "n": None, "mixed": "1"},
        {"url": "http://b/", "n": 2.5, "mixed": "x"},
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [('"a string"', "expected a JSON array"), ("  ", "no JSON value"), ('{"url": {"0": ', "not valid JSON")],
)
def test_json_of_no_known_layout_names_the_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "odd.json"
    path.write_text(content)
    with pytest.raises(InputError, match=expected) as err:
        _shards(str(path), input_format="json")
    assert "odd.json" in str(err.value)
