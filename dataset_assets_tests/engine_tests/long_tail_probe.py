"""Run inside a network namespace of its own by test_long_tail.py: one shard over a long tail of
host names resolved by the bench's slow DNS server on 127.0.0.1; prints what the sites saw.

Not a test module itself (pytest collects only test_*.py): it needs ``unshare -n -m`` around it.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from yarl import URL

from bench._common import corpus_name, start_server, write_url_list
from bench.dns_server import SlowDns
from dataset_assets.engine import DownloadOptions
from dataset_assets.engine.runner import download_shard
from dataset_assets_tests.fakeweb.images import make_image

ROWS = 400
NAMES = 300
ADDRESSES = 4


def main(rows: int = ROWS, names: int = NAMES, lose_first: int = 0) -> int:
    """``lose_first``: the DNS server ignores the first that many queries of each name."""
    work = Path(tempfile.mkdtemp(prefix="long_tail_"))
    corpus = work / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / corpus_name(i)).write_bytes(make_image(i, 96 + i, 64, "jpg"))
    server = start_server(corpus, hosts=ADDRESSES, latency=(0.0, 0.02), lifetime_s=120, recorded_paths=5000)
    try:
        with SlowDns(cold_s=(0.04, 0.08), lifetime_s=120, lose_first=lose_first) as dns:
            used = write_url_list(work / "urls.parquet", server, rows, corpus_size=8, host_names=names)
            urls = pq.read_table(work / "urls.parquet").rename_columns(["url", "caption"])
            options = DownloadOptions(
                allow_private_addresses=True,
                processes_count=2,
                thread_count=64,
                timeout=5,
                output_format="parquet",
                number_sample_per_shard=rows,
            )
            started = time.monotonic()
            stats = download_shard(urls, str(work / "out"), options, shard_id=0)
            elapsed = time.monotonic() - started
            seen = server.stats()
            busiest = max(collections.Counter(URL(u).host for u in urls.column("url").to_pylist()).values())
            report = {
                "rows": rows,
                "hosts_used": used,
                "successes": stats.successes,
                "failures": {k: v for k, v in stats.status_dict.items() if k != "success"},
                "dns_names": len(dns.queries),
                "dns_lookups": sum(dns.queries.values()),
                "max_lookups_one_name": max(dns.queries.values(), default=0),
                "min_lookups_one_name": min(dns.queries.values(), default=0),
                "robots_txt_requests": sum(s.paths.count("/robots.txt") for s in seen),
                "tdmrep_requests": sum(s.paths.count("/.well-known/tdmrep.json") for s in seen),
                "ai_txt_requests": sum(s.paths.count("/ai.txt") for s in seen),
                "max_connections_one_name": max(
                    (peak for s in seen for peak in s.name_peak_connections.values()), default=0
                ),
                "busiest_name_rows": busiest,
                "max_connections_per_host": options.max_connections_per_host,
                "elapsed_s": elapsed,
            }
    finally:
        server.stop()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(arg) for arg in sys.argv[1:])))
