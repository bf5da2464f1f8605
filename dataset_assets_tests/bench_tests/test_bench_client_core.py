"""The client-core probe: both clients read every body whole, and the savings line is derived."""

from __future__ import annotations

import re

import pytest

from bench import bench_client_core


def test_probe_reads_every_body_with_both_clients_and_prints_the_split(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # main exits with an error if either client got fewer bytes than it asked for; 300 requests
    # take tens of ms of CPU, well above the clock tick os.times counts in
    assert bench_client_core.main(["--requests", "300", "--rounds", "1", "--per-connection", "1", "3"]) == 0
    out = capsys.readouterr().out
    measured = re.findall(r"round 1 (aiohttp|raw)\s+(\d)/connection:\s+(\d+) µs/request", out)
    assert sorted((client, per) for client, per, _ in measured) == [
        ("aiohttp", "1"),
        ("aiohttp", "3"),
        ("raw", "1"),
        ("raw", "3"),
    ]
    assert all(int(us) > 0 for _, _, us in measured)
    assert re.search(r"a request on a kept-alive connection: aiohttp -?\d+ µs, raw -?\d+ µs", out)
    assert re.search(
        r"at most saved per long-tail image \(0.46 new connections, 2.03 requests\): -?[\d.]+ CPU ms", out
    )
