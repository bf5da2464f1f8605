"""The benchmarks' load generator: several image server processes seen as one, URL lists over them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench._common import corpus_name, start_server, write_url_list
from dataset_assets_tests.fakeweb.images import make_image


@pytest.mark.slow
def test_server_group_splits_hosts_and_serves_reused_images(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    images = {corpus_name(i): make_image(i, 64 + i, 48, "jpg") for i in range(3)}
    for name, data in images.items():
        (corpus / name).write_bytes(data)

    server = start_server(corpus, hosts=5, latency=(0.0, 0.0), lifetime_s=60, processes=2)
    try:
        assert server.hosts == [f"127.0.0.{i}" for i in range(1, 6)]
        assert len(set(server.pids)) == 2
        write_url_list(tmp_path / "urls.parquet", server, 7, corpus_size=3)
        urls = pq.read_table(tmp_path / "urls.parquet").column("URL").to_pylist()
        assert len(set(urls)) == 7  # reused images still get distinct URLs
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        for i, url in enumerate(urls):
            assert url.startswith(f"http://{server.hosts[i % 5]}:")
            with opener.open(url, timeout=10) as response:
                assert response.read() == images[corpus_name(i % 3)]
    finally:
        server.stop()
    for process in (s.process for s in server.servers):
        assert process.wait(timeout=10) is not None
