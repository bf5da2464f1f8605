"""The url_blocklist: its file format, its one normal form, and rows refused before any request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.consent.blocklist import BlocklistError, load_blocklist
from dataset_assets.engine.runner import download_shard
from dataset_assets.engine.shards.layout import compute_key
from dataset_assets.engine.url_form import normalize_url
from dataset_assets.planning.urls import _normalize_sql
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.server import ImageServer

TRICKY_URLS = [
    "http://a.com/1.jpg",
    "HTTP://A.COM/1.jpg",
    " https://Ex.com:8080/P a t h/ü.jpg?q=É#frag ",
    "http://user:Pw@Host.com",
    "http://host.com?x=1",
    "http://[::1]:80/x",
    "http://h.com/%20already%2Fencoded",
    "ftp://a.com/x",
    "not a url",
    "http:///nohost",
    "http://bad host/x",
    "",
]


def test_python_normal_form_equals_the_planners_sql() -> None:
    """The planner's fetch_url (http(s) only) and the engine's normal form never differ."""
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t (i INTEGER, u VARCHAR)")
        con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(TRICKY_URLS)))
        planned = con.execute(f"SELECT {_normalize_sql('u', http_only=True)} FROM t ORDER BY i").fetchall()
    finally:
        con.close()
    assert [normalize_url(url) for url in TRICKY_URLS] == [value for (value,) in planned]
    assert normalize_url(" https://Ex.com:8080/P a t h/ü.jpg?q=É#frag ") == (
        "https://ex.com:8080/P%20a%20t%20h/%C3%BC.jpg?q=%C3%89"
    )


def test_lines_are_urls_digests_or_domains(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"http://x.com/given").hexdigest()
    listing = tmp_path / "removals.txt"
    listing.write_text(
        "# removal requests\n"
        "\n"
        "HTTP://Example.COM/a.jpg#fragment\n"
        f"{digest.upper()}  # as published\n"
        "*.Blocked.TEST.\n"
        "127.0.0.2\n"
    )
    blocklist = load_blocklist(str(listing))
    assert blocklist.urls == {"http://example.com/a.jpg"}
    assert blocklist.digests == {digest}
    assert blocklist.domains == {"blocked.test", "127.0.0.2"}
    assert blocklist.refusal("http://example.com/a.jpg") == "blocked by url_blocklist (URL)"
    assert blocklist.refusal("http://x.com/given") == "blocked by url_blocklist (URL sha256)"
    assert (
        blocklist.refusal("http://cdn.img.blocked.test./x.jpg")
        == "blocked by url_blocklist (domain blocked.test)"
    )
    assert blocklist.refusal("http://notblocked.test/x.jpg") is None  # a label boundary, not a suffix
    assert blocklist.refusal("http://127.0.0.2:9/x.jpg") == "blocked by url_blocklist (domain 127.0.0.2)"
    assert blocklist.refusal("http://10.127.0.0.2/x.jpg") is None  # an IP matches only itself
    assert blocklist.refusal("http://example.com/a.jpg?other") is None


def test_digest_of_the_normal_form_matches_too(tmp_path: Path) -> None:
    listing = tmp_path / "digests.txt"
    listing.write_text(hashlib.sha256(b"http://x.com/a%20b").hexdigest() + "\n")
    assert (
        load_blocklist(str(listing)).refusal(" HTTP://X.com/a b") == "blocked by url_blocklist (URL sha256)"
    )


def test_a_folder_of_lists_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text("a.com\n")
    (tmp_path / "lists" / "b.txt").write_text("http://b.com/x.jpg\n")
    (tmp_path / "lists" / ".hidden").write_text("not a line we read ~~~\n")
    blocklist = load_blocklist(str(tmp_path / "lists"))
    assert blocklist.domains == {"a.com"} and blocklist.urls == {"http://b.com/x.jpg"}


def test_bad_lists_fail_with_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(BlocklistError, match=r"^url_blocklist .*missing\.txt not found$"):
        load_blocklist(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("a.com\nexample.com/path/without/scheme\n")
    with pytest.raises(BlocklistError, match=r"bad\.txt:2: not a URL, URL sha256 or domain"):
        load_blocklist(str(bad))


def test_blocked_rows_are_recorded_and_never_requested(image_server: ImageServer, tmp_path: Path) -> None:
    listing = tmp_path / "removals.txt"
    listing.write_text(f"{image_server.url('portrait.jpg')}\n")
    urls = [image_server.url("landscape.jpg"), image_server.url("portrait.jpg")]
    options = local_options(output_format="parquet", url_blocklist=str(listing))
    stats = download_shard(rows(urls), str(tmp_path / "out"), options)
    got = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()}
    assert got[compute_key(1, 0, 10_000, 5)]["error_message"] == "blocked by url_blocklist (URL)"
    assert got[compute_key(0, 0, 10_000, 5)]["status"] == "success"
    assert stats.opt_outs == {"blocklist": 1}
    paths = image_server.stats.paths
    assert "/img/landscape.jpg" in paths and not any("portrait" in path for path in paths)
