from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.runner import download_shard
from dataset_assets.io.sources import InputError
from dataset_assets.planning import FilterSettings, filter_urls, normalize_url_sql, write_shard_inputs
from dataset_assets.planning.urls import planner_connection
from dataset_assets.schema.option import OptionError
from dataset_assets_tests.conftest import local_options
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

# (url, caption, WIDTH, HEIGHT, similarity, punsafe) and the rule expected to remove the row.
CRAFTED: list[tuple[tuple, str | None]] = [
    (("http://a.com/1.jpg", "cap one", 500, 500, 0.3, 0.1), None),
    (("http://A.COM/1.jpg", "cap one", 500, 500, 0.3, 0.1), "duplicate"),
    ((" http://a.com/1.jpg#frag ", "cap one", 500, 500, 0.3, 0.1), "duplicate"),
    (("ftp://a.com/2.jpg", "good caption", 500, 500, 0.3, 0.1), "invalid_url"),
    (("not a url", "good caption", 500, 500, 0.3, 0.1), "invalid_url"),
    ((None, "good caption", 500, 500, 0.3, 0.1), "invalid_url"),
    (("", "good caption", 500, 500, 0.3, 0.1), "invalid_url"),
    (("http:///nohost.jpg", "good caption", 500, 500, 0.3, 0.1), "invalid_url"),
    (("http://b.com/2.jpg", "ab", 500, 500, 0.3, 0.1), "min_caption_length"),
    (("http://b.com/3.jpg", "good caption", 50, 500, 0.3, 0.1), "min_width"),
    (("http://b.com/4.jpg", "good caption", 500, 50, 0.3, 0.1), "min_height"),
    (("http://b.com/5.jpg", "good caption", 1000, 200, 0.3, 0.1), "max_filter_aspect_ratio"),
    (("http://b.com/6.jpg", "good caption", 500, 500, 0.1, 0.1), "min_similarity"),
    (("http://c.b.com/7.jpg", "good caption", 500, 500, 0.3, 0.9), "max_punsafe"),
    (("http://bad.com/8.jpg", "good caption", 500, 500, 0.3, 0.1), "denied_domains"),
    (("http://img.BAD.com:8080/9.jpg", "good caption", 500, 500, 0.3, 0.1), "denied_domains"),
    (("http://notbad.com/10.jpg", "good caption", 500, 500, 0.3, 0.1), None),
    (("http://b.com/11.jpg", "good caption", None, 500, 0.3, 0.1), None),  # unknown width passes
    (("http://b.com/3.jpg", "good caption", 500, 500, 0.3, 0.1), "duplicate"),  # dup of a filtered row
]
NAMES = ["url", "caption", "WIDTH", "HEIGHT", "similarity", "punsafe"]
SETTINGS = FilterSettings(
    caption_col="caption",
    min_caption_length=5,
    min_width=100,
    min_height=100,
    max_filter_aspect_ratio=3.0,
    min_similarity=0.2,
    max_punsafe=0.5,
    max_pwatermark=0.5,  # no such column: skipped
    denied_domains=("bad.com",),
)


def _write_crafted(path: Path) -> Path:
    rows = [r for r, _ in CRAFTED]
    if path.suffix == ".parquet":
        pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(NAMES)}), path)
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(NAMES)
            writer.writerows([["" if v is None else v for v in r] for r in rows])
    return path


def _normalize(con: duckdb.DuckDBPyConnection, url: str | None) -> str | None:
    return con.execute(f"SELECT {normalize_url_sql('$1')}", [url]).fetchall()[0][0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            " HTTP://Example.COM/Path/My Image.JPG?q=a b#frag ",
            "http://example.com/Path/My%20Image.JPG?q=a%20b",
        ),
        ("https://exa.com/café.jpg", "https://exa.com/caf%C3%A9.jpg"),
        ("https://exa.com/a%20b%C3%A9.jpg", "https://exa.com/a%20b%C3%A9.jpg"),
        ("https://exa.com/日本", "https://exa.com/%E6%97%A5%E6%9C%AC"),
        ("http://Ex.com", "http://ex.com/"),
        ("http://Ex.com?x=1", "http://ex.com/?x=1"),
        ("http://User:PW@Ex.COM:8080/X", "http://User:PW@ex.com:8080/X"),
        ("https://Bücher.DE/x", "https://bücher.de/x"),
        ("https://already.normal.com/x.jpg?a=B", "https://already.normal.com/x.jpg?a=B"),
        ("ftp://Host/x", "ftp://host/x"),
        ("garbage", None),
        (None, None),
    ],
)
def test_normalize_url_sql(raw: str | None, expected: str | None) -> None:
    assert _normalize(duckdb.connect(), raw) == expected


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_exact_sequential_counts(tmp_path: Path, suffix: str) -> None:
    path = _write_crafted(tmp_path / f"input{suffix}")
    out = tmp_path / "out" / "filtered.parquet"
    report = filter_urls(str(path), suffix[1:], str(out), SETTINGS)

    expected = {
        "invalid_url": 0,
        "duplicate": 0,
        "min_caption_length": 0,
        "min_width": 0,
        "min_height": 0,
        "max_filter_aspect_ratio": 0,
        "min_similarity": 0,
        "max_punsafe": 0,
        "denied_domains": 0,
    }
    for _, rule in CRAFTED:
        if rule:
            expected[rule] += 1
    assert report.removed == expected
    assert list(report.removed) == list(expected)  # rule order
    assert report.rows_in == len(CRAFTED)
    assert report.rows_out == sum(1 for _, rule in CRAFTED if rule is None) == 3
    assert set(report.skipped_rules) == {"max_pwatermark"}
    assert "pwatermark" in report.skipped_rules["max_pwatermark"]

    table = pq.read_table(out)
    assert table.column_names == ["url", "fetch_url", "caption", "WIDTH", "HEIGHT", "similarity", "punsafe"]
    assert table.column("url").to_pylist() == [
        "http://a.com/1.jpg",
        "http://notbad.com/10.jpg",
        "http://b.com/11.jpg",
    ]
    assert table.column("fetch_url").to_pylist() == table.column("url").to_pylist()
    # A CSV's numbers stay numbers, as in the parquet input (img2dataset's pandas reader agrees).
    assert table.schema.field("WIDTH").type == pa.int64()
    assert table.schema.field("similarity").type == pa.float64()
    assert table.schema.field("caption").type == pa.string()
    assert report.columns == table.column_names
    assert sorted(report.top_domains) == [("a.com", 1), ("b.com", 1), ("notbad.com", 1)]
    assert not [p for p in out.parent.iterdir() if p.name != "filtered.parquet"]  # no temp file left


def test_allowed_domains_and_unset_filters(tmp_path: Path) -> None:
    path = _write_crafted(tmp_path / "input.parquet")
    out = tmp_path / "filtered.parquet"
    report = filter_urls(str(path), "parquet", str(out), FilterSettings(allowed_domains=["b.com"]))
    assert report.removed == {"invalid_url": 5, "duplicate": 3, "allowed_domains": 4}
    assert report.skipped_rules == {}
    urls = pq.read_table(out).column("url").to_pylist()
    assert urls == [f"http://b.com/{i}.jpg" for i in (2, 3, 4, 5, 6)] + [
        "http://c.b.com/7.jpg",
        "http://b.com/11.jpg",
    ]
    # Filter columns present in the input are carried along even when their filter is unset.
    assert pq.read_schema(out).names == ["url", "fetch_url", "WIDTH", "HEIGHT", "similarity", "punsafe"]


def test_missing_filter_columns_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("http://a.com/1\nhttp://a.com/1#x\nhttp://b.com/2\n")
    settings = FilterSettings(
        min_width=10, max_filter_aspect_ratio=2, min_similarity=0.3, max_punsafe=0.5, min_caption_length=3
    )
    report = filter_urls(str(path), "txt", str(tmp_path / "f.parquet"), settings)
    assert report.removed == {"invalid_url": 0, "duplicate": 1}
    assert set(report.skipped_rules) == {
        "min_caption_length",
        "min_width",
        "max_filter_aspect_ratio",
        "min_similarity",
        "max_punsafe",
    }
    assert "WIDTH" in report.skipped_rules["min_width"] and "urls.txt" in report.skipped_rules["min_width"]
    assert report.rows_out == 2


def test_lower_case_width_height_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"url": ["http://a/1", "http://a/2"], "width": [10, 500], "height": [500, 500]}), path
    )
    settings = FilterSettings(min_width=100, max_filter_aspect_ratio=math.inf)
    report = filter_urls(str(path), "parquet", str(tmp_path / "f.parquet"), settings)
    assert report.removed["min_width"] == 1
    assert report.removed["max_filter_aspect_ratio"] == 0
    assert pq.read_schema(tmp_path / "f.parquet").names == ["url", "fetch_url", "width", "height"]


def test_several_files_keep_file_order_and_dedup_across_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.txt").write_text("http://x/b1\nhttp://x/a1\n")
    (folder / "a.txt").write_text("http://x/a1\nhttp://x/a2\n")
    out = tmp_path / "f.parquet"
    report = filter_urls(str(folder), "txt", str(out), FilterSettings())
    assert report.removed == {"invalid_url": 0, "duplicate": 1}
    assert pq.read_table(out).column("url").to_pylist() == ["http://x/a1", "http://x/a2", "http://x/b1"]


def test_url_keeps_the_input_text_while_dedup_compares_the_normalised_form(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    given = "https://Example.COM/été 2020.jpg#x"
    path.write_text(f"url\n{given}\nhttps://example.com/%C3%A9t%C3%A9%202020.jpg\nhttp://b.com/ b.jpg \n")
    out = tmp_path / "f.parquet"
    report = filter_urls(str(path), "csv", str(out), FilterSettings())
    assert report.removed == {"invalid_url": 0, "duplicate": 1}
    table = pq.read_table(out)
    assert table.column("url").to_pylist() == [given, "http://b.com/ b.jpg "]  # exactly as given
    assert table.column("fetch_url").to_pylist() == [
        "https://example.com/%C3%A9t%C3%A9%202020.jpg",
        "http://b.com/%20b.jpg",
    ]
    assert sorted(report.top_domains) == [("b.com", 1), ("example.com", 1)]


def test_files_with_different_column_types_share_one(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("url,score,n\nhttp://x/1,1,5\nhttp://x/2,2,6\n")
    (folder / "b.csv").write_text("url,score,n\nhttp://x/3,N/A,7.5\n")
    out = tmp_path / "f.parquet"
    filter_urls(str(folder), "csv", str(out), FilterSettings(save_additional_columns=["score", "n"]))
    table = pq.read_table(out)
    assert table.column("score").to_pylist() == ["1", "2", "N/A"]
    assert table.column("n").to_pylist() == [5.0, 6.0, 7.5]


def test_missing_required_column_and_empty_input(tmp_path: Path) -> None:
    path = _write_crafted(tmp_path / "input.csv")
    with pytest.raises(InputError, match=r"caption_col 'text' not found .*input\.csv.*url, caption, WIDTH"):
        filter_urls(str(path), "csv", str(tmp_path / "f.parquet"), FilterSettings(caption_col="text"))
    empty = tmp_path / "empty.csv"
    empty.write_text("url,caption\n")
    with pytest.raises(InputError, match="contains no rows"):
        filter_urls(str(empty), "csv", str(tmp_path / "f.parquet"), FilterSettings())
    assert not (tmp_path / "f.parquet").exists()


def test_url_blocklist_removes_listed_rows_and_counts_them(tmp_path: Path) -> None:
    given = " http://D.com/given.jpg"  # a digest of the text as given, spaces and case included
    urls = [
        "http://keep.com/1.jpg",
        "http://A.com/listed.jpg#frag",  # the URL line, spelled otherwise
        given,
        "http://e.com/normal%20form.jpg",  # the digest of the normal form
        "http://cdn.img.blocked.org:8080/x.jpg",  # a subdomain of a listed domain
        "http://blocked.org./y.jpg",  # the listed domain (trailing dot)
        "http://notblocked.org/z.jpg",  # only a suffix of the text, not a parent domain
        "http://blocked.org.evil.com/w.jpg",
        "http://127.0.0.2/v.jpg",  # an IP matches only itself
    ]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": urls}), path)
    listing = tmp_path / "removals"
    listing.mkdir()
    filler = "\n".join(f"http://filler{i}.com/{i}.jpg" for i in range(50_000))
    (listing / "a.txt").write_text(f"# a removal list\nhttp://a.com/listed.jpg\n{filler}\n")
    (listing / "b.txt").write_text(
        f"{hashlib.sha256(given.encode()).hexdigest()}\n"
        f"{hashlib.sha256(b'http://e.com/normal%20form.jpg').hexdigest()}\n"
        "Blocked.ORG\n0.0.2\n"
    )
    out = tmp_path / "f.parquet"
    report = filter_urls(str(path), "parquet", str(out), FilterSettings(url_blocklist=str(listing)))
    assert report.removed == {"invalid_url": 0, "duplicate": 0, "url_blocklist": 5}
    assert pq.read_table(out).column("url").to_pylist() == [
        "http://keep.com/1.jpg",
        "http://notblocked.org/z.jpg",
        "http://blocked.org.evil.com/w.jpg",
        "http://127.0.0.2/v.jpg",
    ]


def test_url_blocklist_missing_or_empty(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("http://a.com/1\n")
    missing = tmp_path / "gone.txt"
    with pytest.raises(InputError, match=f"^url_blocklist {missing} not found$"):
        filter_urls(str(path), "txt", str(tmp_path / "f.parquet"), FilterSettings(url_blocklist=str(missing)))
    assert not (tmp_path / "f.parquet").exists()
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    settings = FilterSettings(url_blocklist=str(tmp_path / "empty.txt"))
    report = filter_urls(str(path), "txt", str(tmp_path / "f.parquet"), settings)
    assert report.rows_out == 1 and "url_blocklist" in report.skipped_rules


def test_shuffle_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'http://h' || (i % 7) || '.com/' || i AS url FROM range(2000) t(i)) TO '{path}'"
    )

    def run(seed: int | None, name: str) -> list[str]:
        out = tmp_path / name
        filter_urls(str(path), "parquet", str(out), FilterSettings(shuffle_seed=seed))
        return pq.read_table(out).column("url").to_pylist()

    plain, first, again, other = run(None, "p"), run(1, "a"), run(1, "b"), run(2, "c")
    assert first == again
    assert first != other and first != plain
    assert sorted(first) == sorted(other) == sorted(plain)
    assert plain == [f"http://h{i % 7}.com/{i}" for i in range(2000)]


def test_one_million_rows(tmp_path: Path) -> None:
    """Scale check (generated by DuckDB): ~5% duplicates, a few invalid rows, LAION columns."""
    path = tmp_path / "big.parquet"
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT
            CASE WHEN i % 1000 = 7 THEN 'garbage ' || i
                 ELSE 'https://img' || (hash(id) % 5000) || '.example.com/' || id || '.jpg' END AS url,
            'caption ' || id AS caption,
            (hash(id * 3) % 1000)::INTEGER AS WIDTH, (hash(id * 5) % 1000)::INTEGER AS HEIGHT
        FROM (SELECT i, CASE WHEN i % 20 = 0 AND i > 0 THEN hash(i) % i ELSE i END AS id
              FROM range(1000000) t(i)))
        TO '{path}' (FORMAT parquet)"""
    )
    out = tmp_path / "filtered.parquet"
    report = filter_urls(str(path), "parquet", str(out), FilterSettings(caption_col="caption", min_width=100))
    assert report.removed["invalid_url"] == 1000
    assert 40_000 < report.removed["duplicate"] < 50_000
    assert report.rows_out == pq.read_metadata(out).num_rows
    assert report.rows_in == 1_000_000
    assert report.rows_out == report.rows_in - sum(report.removed.values())
    assert len(report.top_domains) == 20
    keys = write_shard_inputs(str(out), str(tmp_path / "shards"), 10_000)
    assert len(keys) == -(-report.rows_out // 10_000)


def test_planned_shard_stores_the_input_url_and_fetches_the_normalised_one(tmp_path: Path) -> None:
    """The Dagster path: plan, cut, download; the dataset's url joins back to the input."""
    with ImageServer(
        images={"été 2020.jpg": make_image(6, 40, 30, "jpg")}, config=ServerConfig(max_lifetime_s=120)
    ) as server:
        given = f"HTTP://127.0.0.1:{server.port}/img/%C3%A9t%C3%A9 2020.jpg#x"
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"url": [given, given.replace("#x", "")]}), path)
        filter_urls(str(path), "parquet", str(tmp_path / "f.parquet"), FilterSettings())
        write_shard_inputs(str(tmp_path / "f.parquet"), str(tmp_path / "shards"), 10)
        shard = pq.read_table(tmp_path / "shards" / "00000.parquet")
        stats = download_shard(shard, str(tmp_path / "out"), local_options(output_format="parquet"))
        paths = server.stats.paths  # the origin's policy files (asked together), then the image
        assert sorted(paths[:-1]) == ["/.well-known/tdmrep.json", "/ai.txt", "/robots.txt"]
        assert paths[-1] == "/img/%C3%A9t%C3%A9%202020.jpg"
    assert stats.successes == stats.count == 1  # the second spelling was a duplicate
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert table.column("url").to_pylist() == [given]
    assert "fetch_url" not in table.column_names


def test_planner_memory_limit_and_spill_folder_reach_duckdb(tmp_path: Path) -> None:
    settings = FilterSettings(planner_memory_limit="1GB", planner_temp_directory=str(tmp_path / "spill"))
    with planner_connection([], settings) as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("953.6 MiB",)
        (spill,) = con.execute("SELECT current_setting('temp_directory')").fetchone()
        assert Path(spill).parent == tmp_path / "spill"  # a subfolder of its own: plans may overlap
    assert list((tmp_path / "spill").iterdir()) == []  # removed after
    # filter_urls plans through it: the folder is made, the plan written, nothing left behind.
    path = _write_crafted(tmp_path / "input.parquet")
    settings = FilterSettings(planner_memory_limit="256MiB", planner_temp_directory=str(tmp_path / "other"))
    report = filter_urls(str(path), "parquet", str(tmp_path / "filtered.parquet"), settings)
    assert report.rows_out == pq.read_metadata(tmp_path / "filtered.parquet").num_rows > 0
    assert (tmp_path / "other").is_dir() and list((tmp_path / "other").iterdir()) == []


@pytest.mark.parametrize("limit", ["lots", "2", "-1GB", ""])
def test_planner_memory_limit_is_checked_up_front(limit: str) -> None:
    with pytest.raises(OptionError, match="planner_memory_limit must be a size such as 2GB"):
        FilterSettings(planner_memory_limit=limit)
