"""The demo's URL list, planned as the demo plans it: no shard is mostly broken rows.

The demo's broken rows (dead links, an opt-out, an html page) were appended at the end; with
the default 1500 images the planner's last shard held four of them and nothing else, failed
its success-rate gate, and the demo's first command ended in an error.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dataset_assets.demo.prepare import DemoPaths, write_spec, write_url_list
from dataset_assets.planning import filter_urls, write_shard_inputs
from dataset_assets.spec import load_spec
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

BROKEN = ("/status/", "/robots-tag/", "/html")


@pytest.mark.parametrize("images", [1500, 1000, 400, 60])
def test_every_demo_shard_can_pass_the_success_floor(tmp_path: Path, images: int) -> None:
    paths = DemoPaths(tmp_path)
    paths.root.mkdir(exist_ok=True)
    with ImageServer(images={}, config=ServerConfig(max_lifetime_s=30)) as server:
        write_url_list(paths.urls, server, [f"{i:06d}.jpg" for i in range(images)])
    write_spec(paths)
    spec = load_spec(paths.spec)
    filter_urls(spec.url_list, spec.input_format, spec.filtered_urls_path, spec.filter_settings())
    keys = write_shard_inputs(
        spec.filtered_urls_path, spec.shard_inputs_folder, spec.number_sample_per_shard, spec.oom_shard_count
    )
    assert len(keys) == -(-(images + 4) // spec.number_sample_per_shard)
    broken_total = 0
    for shard in sorted(Path(spec.shard_inputs_folder).glob("*.parquet")):
        urls = pq.read_table(shard, columns=["url"]).column("url").to_pylist()
        broken = sum(any(mark in url for mark in BROKEN) for url in urls)
        broken_total += broken
        assert (len(urls) - broken) / len(urls) >= spec.success_rate_floor, (shard.name, broken, len(urls))
    assert broken_total == 4  # every broken row kept by the filters is still in some shard
