"""The long tail: hundreds of host names behind a DNS server with slow cold lookups.

The DNS server (bench/dns_server.py) runs on 127.0.0.1 inside a network namespace made for
this test (``unshare -n -m``, loopback up, a resolv.conf naming it bind-mounted over
/etc/resolv.conf there); the machine's resolver is never touched.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _netns_usable() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


needs_netns = pytest.mark.skipif(
    not _netns_usable(), reason="needs unshare -n -m (root or user namespaces) and ip"
)


def _probe(tmp_path: Path, *args: int, resolver_options: str = "timeout:2 attempts:2") -> dict:
    """Run long_tail_probe in a network namespace of its own; its report."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.1\noptions {resolver_options}\n")
    probe = shlex.join(
        [sys.executable, "-m", "dataset_assets_tests.engine_tests.long_tail_probe", *map(str, args)]
    )
    script = f"ip link set lo up && mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf && exec {probe}"
    done = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_netns
def test_long_tail_resolves_each_name_once_and_asks_robots_once_per_origin(tmp_path) -> None:
    report = _probe(tmp_path)
    assert report["successes"] == report["rows"], report["failures"]
    # One lookup per name per run with two worker processes: each name's rows go to one worker.
    assert report["dns_names"] == report["hosts_used"]
    assert report["max_lookups_one_name"] == 1, report
    assert report["robots_txt_requests"] == report["hosts_used"]
    assert report["tdmrep_requests"] == report["ai_txt_requests"] == report["hosts_used"]
    # The budget is per site as the site sees it: per host name, though 300 names share 4
    # addresses. The Zipf head holds more rows than the cap, so a per-row connection would show.
    assert report["busiest_name_rows"] > report["max_connections_per_host"], report
    assert 1 <= report["max_connections_one_name"] <= report["max_connections_per_host"], report


@pytest.mark.slow
@needs_netns
def test_lookups_whose_first_two_answers_are_lost_still_resolve(tmp_path) -> None:
    """resolv.conf says 2 attempts, as on most machines; a name's rows must not fail because two
    datagrams of its lookup were lost (c-ares's learned timeouts are short on a fast resolver)."""
    report = _probe(tmp_path, 60, 40, 2, resolver_options="timeout:1 attempts:2")
    assert report["successes"] == report["rows"], report["failures"]
    assert report["min_lookups_one_name"] >= 3, report  # every name was really lost twice
