"""Planner benchmark: a 10 M row LAION-like list through filter_urls and write_shard_inputs.

Each step runs in its own child process so that its peak RSS (ru_maxrss) is its own and not the
high-water mark of an earlier step. Usage::

    .venv/bin/python bench/bench_planner.py [--rows 10000000] [--workdir DIR] [--shuffle-seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import duckdb

GENERATE_SQL = """
COPY (
    WITH r AS (
        SELECT i,
               -- ~5% of rows repeat a random earlier id (a duplicate unless that row is one too)
               CASE WHEN i % 20 = 0 AND i > 0 THEN hash(i) % i ELSE i END AS id
        FROM range({rows}) t(i)
    ), h AS (
        SELECT i, id,
               'site' || (hash(id * 7) % 50000) || '.com' AS domain,
               hash(id * 17) % 3 AS sub
        FROM r
    ), u AS (
        SELECT i, id,
               CASE sub WHEN 0 THEN 'www.' || domain WHEN 1 THEN 'img.' || domain ELSE domain END AS host
        FROM h
    )
    SELECT
        CASE
            WHEN i % 1000 = 6 THEN 'not a url ' || id
            WHEN i % 500 = 5 THEN 'ftp://' || host || '/' || id || '.jpg'
            WHEN i % 100 = 0 THEN 'HTTPS://' || upper(host) || '/images/' || id || '/photo.jpg'
            WHEN i % 100 = 1 THEN 'https://' || host || '/images/' || id || '/photo.jpg#section'
            WHEN i % 100 = 2 THEN '  https://' || host || '/images/' || id || '/photo.jpg '
            WHEN i % 100 = 3 THEN 'https://' || host || '/images/' || id || '/my photo.jpg'
            WHEN i % 100 = 4 THEN 'https://' || host || '/images/' || id || '/café.jpg'
            ELSE 'https://' || host || '/images/' || id || '/photo.jpg'
        END AS url,
        'a photo of thing ' || id || repeat(' lorem', (hash(id * 3) % 12)::INTEGER) AS caption,
        (64 + hash(id * 5) % 1500)::BIGINT AS WIDTH,
        ((64 + hash(id * 5) % 1500) * (0.4 + (hash(id * 11) % 1000) / 1000.0))::BIGINT AS HEIGHT,
        (0.2 + (hash(id * 13) % 10000) / 10000.0 * 0.25)::FLOAT AS similarity,
        pow((hash(id * 19) % 10000) / 10000.0, 4)::FLOAT AS punsafe,
        pow((hash(id * 23) % 10000) / 10000.0, 3)::FLOAT AS pwatermark
    FROM u
) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""


def _generate(workdir: str, rows: int) -> dict[str, Any]:
    path = os.path.join(workdir, "laion_like.parquet")
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(GENERATE_SQL.format(rows=int(rows), path=path))
    return {"path": path, "bytes": os.path.getsize(path)}


def _filter(workdir: str, shuffle_seed: int | None) -> dict[str, Any]:
    from dataset_assets.planning import FilterSettings, filter_urls

    settings = FilterSettings(
        caption_col="caption",
        min_caption_length=5,
        min_width=128,
        min_height=128,
        max_filter_aspect_ratio=2.0,
        min_similarity=0.21,
        max_punsafe=0.5,
        max_pwatermark=0.8,
        denied_domains=("site1.com", "site2.com"),
        shuffle_seed=shuffle_seed,
    )
    out = os.path.join(workdir, "filtered.parquet")
    report = filter_urls(os.path.join(workdir, "laion_like.parquet"), "parquet", out, settings)
    meta = report.to_metadata()
    meta["top_domains"] = meta["top_domains"][:3]
    return meta


def _shard(workdir: str) -> dict[str, Any]:
    from dataset_assets.planning import write_shard_inputs

    out_dir = os.path.join(workdir, "shards")
    before = (
        {n: os.stat(os.path.join(out_dir, n)).st_mtime_ns for n in os.listdir(out_dir)}
        if os.path.isdir(out_dir)
        else {}
    )
    keys = write_shard_inputs(os.path.join(workdir, "filtered.parquet"), out_dir, 10_000)
    after = {n: os.stat(os.path.join(out_dir, n)).st_mtime_ns for n in os.listdir(out_dir)}
    rewritten = sum(1 for n, m in after.items() if before.get(n) != m)
    return {"shards": len(keys), "files_written": rewritten}


def _child(step: str, workdir: str, rows: int, shuffle_seed: int | None) -> None:
    start = time.perf_counter()
    if step == "generate":
        result = _generate(workdir, rows)
    elif step == "filter_urls":
        result = _filter(workdir, shuffle_seed)
    else:
        result = _shard(workdir)
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--shuffle-seed", type=int, default=None)
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _child(args.step, args.workdir, args.rows, args.shuffle_seed)
        return
    with tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        print(f"rows={args.rows:,} workdir={workdir} cpus={os.cpu_count()} duckdb={duckdb.__version__}")
        for step in ("generate", "filter_urls", "write_shard_inputs", "write_shard_inputs"):
            cmd = [sys.executable, __file__, "--step", step, "--workdir", workdir, "--rows", str(args.rows)]
            if args.shuffle_seed is not None:
                cmd += ["--shuffle-seed", str(args.shuffle_seed)]
            out = (
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            result = json.loads(out)
            seconds, rss = result.pop("seconds"), result.pop("peak_rss_mb")
            print(f"{step:>20}: {seconds:7.2f} s  peak RSS {rss:8.1f} MB  {result}")
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"max peak RSS over all steps (children) {children:.1f} MB; driver process {own:.1f} MB")


if __name__ == "__main__":
    main()
