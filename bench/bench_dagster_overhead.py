"""Dagster overhead: shards through a Dagster run vs the engine alone, same shard inputs.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_dagster_overhead --rows 10000 --rounds 2
    .venv/bin/python -m bench.bench_dagster_overhead --rows 10000 --shards 4 --rounds 1

Setup (not timed): the synthetic corpus (shared with bench_engine's cache; with several shards
the URLs reuse its images under distinct query strings), the loopback image server in its own
process, a URL list, a temporary persistent ``DAGSTER_HOME``, a spec YAML, and one ``dagster
asset materialize --select filtered_urls,url_shards`` that writes the shard inputs and
registers partitions ``00000``...

Then, interleaved for ``--rounds`` rounds, each a subprocess timed from start to exit:

* (D) one Dagster run: with one shard, ``dagster asset materialize -m dataset_assets.definitions
  --select image_shards --partition 00000``; with ``--shards N``, ``dagster job execute -j
  download_shards`` with the partition-range tags a backfill puts on a run of N shards
  (``shards_per_run`` >= N). A fresh output folder each round, via its own spec file;
* (E) the engine alone: ``download_shards`` on the same shard inputs with the same options
  (``spec.download_options()``), one pool, from a bare ``python -c``.

It prints both wall times, images/s and CPU, and the overhead (D - E) / E in %. The overhead
is Dagster's start-up (CLI, code location import), run and event storage, and the asset
wrapper; the download itself is the same code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench._common import (
    DEFAULT_CACHE,
    RunResult,
    clean_env,
    ensure_corpus,
    print_table,
    read_stats,
    run_measured,
    start_server,
    write_url_list,
)
from dataset_assets.partitions import range_tags

ENGINE_ALONE = """
import sys, posixpath
from dataset_assets.spec import load_spec
from dataset_assets.engine.reader import InputShard
from dataset_assets.engine.runner import download_shards
from dataset_assets.io.storage import read_parquet
spec = load_spec(sys.argv[1])
def inputs():
    for shard_id in range(int(sys.argv[2])):
        name = f"{shard_id:0{spec.oom_shard_count}d}"
        yield InputShard(shard_id, read_parquet(posixpath.join(spec.shard_inputs_folder, name + ".parquet")))
for stats in download_shards(inputs(), spec.output_folder, spec.download_options()):
    print(f"shard {stats.shard_id}: {stats.successes}/{stats.count} in {stats.duration:.1f}s")
"""


def write_spec(path: Path, urls: Path, output: Path, plan: Path, args: argparse.Namespace) -> Path:
    spec = {
        "url_list": str(urls),
        "input_format": "parquet",
        "url_col": "URL",
        "caption_col": "TEXT",
        "output_folder": str(output),
        "plan_folder": str(plan),
        "output_format": "webdataset",
        "number_sample_per_shard": args.rows,
        "image_size": 256,
        "resize_mode": "keep_ratio",
        "encode_format": "jpg",
        "encode_quality": 95,
        "processes_count": args.processes,
        "thread_count": args.threads,
        "allow_private_addresses": True,
        "shards_per_run": max(8, args.shards),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_dagster_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows per shard")
    parser.add_argument("--shards", type=int, default=1, help="shards in the one run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=128, help="thread_count (requests per process)")
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.05, 0.1), metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    # On SIGTERM, unwind normally: the measured run's process group and the server get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    corpus = ensure_corpus(args.rows, args.seed, args.cache)
    total_rows = args.rows * args.shards
    work = Path(tempfile.mkdtemp(prefix="bench_dagster_"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    plan = work / "plan"
    urls = work / "urls.parquet"
    dagster = Path(sys.executable).with_name("dagster")
    lifetime = min(4 * 3600.0, args.rounds * 2 * (total_rows / 50 + 180) + 600)
    results: dict[str, list[RunResult]] = {"D": [], "E": []}
    server = start_server(corpus, args.hosts, tuple(args.latency), lifetime)
    try:
        write_url_list(urls, server, total_rows, corpus_size=args.rows)
        spec0 = write_spec(work / "spec_setup.yaml", urls, work / "out_setup", plan, args)
        env = clean_env(DAGSTER_HOME=str(home), DATASET_SPEC=str(spec0), PYTHONUNBUFFERED="1")
        ingest = ["--select", "filtered_urls,url_shards"]
        setup = subprocess.run(
            [str(dagster), "asset", "materialize", "-m", "dataset_assets.definitions", *ingest],
            env=env,
            capture_output=True,
            text=True,
            timeout=args.run_timeout,
        )
        if setup.returncode != 0:
            print(
                f"setup (filtered_urls, url_shards) failed:\n{setup.stdout[-2000:]}\n{setup.stderr[-3000:]}"
            )
            return 1
        print(f"shard input ready in {plan}; DAGSTER_HOME {home}")
        for round_no in range(1, args.rounds + 1):
            for variant in ("D", "E"):
                out = work / f"out_{variant}"
                shutil.rmtree(out, ignore_errors=True)
                spec = write_spec(work / f"spec_{variant}.yaml", urls, out, plan, args)
                env = clean_env(DAGSTER_HOME=str(home), DATASET_SPEC=str(spec), PYTHONUNBUFFERED="1")
                if variant == "D" and args.shards == 1:
                    cmd = [str(dagster), "asset", "materialize", "-m", "dataset_assets.definitions"]
                    cmd += ["--select", "image_shards", "--partition", "00000"]
                elif variant == "D":
                    last = f"{args.shards - 1:05d}"
                    cmd = [str(dagster), "job", "execute", "-m", "dataset_assets.definitions"]
                    cmd += ["-j", "download_shards", "--tags", json.dumps(range_tags("00000", last))]
                else:
                    cmd = [sys.executable, "-c", ENGINE_ALONE, str(spec), str(args.shards)]
                env["BENCH_LOG_DIR"] = str(work)
                result = run_measured(
                    f"{variant}{round_no}", cmd, env, args.run_timeout, server_pids=server.pids
                )
                result.stats = read_stats(out)
                results[variant].append(result)
                print(
                    f"round {round_no} {variant}: {result.successes}/{result.stats.get('count', 0)} ok in "
                    f"{result.wall_s:.1f}s = {result.images_per_s:.0f} img/s, CPU {result.cpu_s:.1f}s, "
                    f"other load {result.foreign_cores:.2f} cores",
                    flush=True,
                )
                if result.returncode != 0 or result.successes == 0:
                    print(f"  exit code {result.returncode}; output tail:\n{result.output_tail}")
    finally:
        server.stop()

    rows = []
    medians = {}
    labels = {
        "D": "dagster asset materialize"
        if args.shards == 1
        else f"dagster job execute, {args.shards} shards",
        "E": "engine alone (download_shards)",
    }
    for variant, label in labels.items():
        runs = results[variant]
        medians[variant] = statistics.median(r.wall_s for r in runs)
        rows.append(
            [
                label,
                " / ".join(f"{r.wall_s:.1f}" for r in runs),
                medians[variant],
                statistics.median(r.images_per_s for r in runs),
                statistics.median(r.cpu_s for r in runs),
                max(r.peak_rss_mb for r in runs),
            ]
        )
    print()
    print_table(["variant", "wall s per round", "median wall s", "img/s", "CPU s", "peak RSS MB"], rows)
    paired = [(d.wall_s - e.wall_s) / e.wall_s for d, e in zip(results["D"], results["E"], strict=True)]
    overhead = (medians["D"] - medians["E"]) / medians["E"]
    extra_s = medians["D"] - medians["E"]
    print(
        f"Dagster overhead: {overhead:+.1%} of the engine's wall time ({extra_s:+.1f}s per run of "
        f"{args.shards} shard(s), {extra_s / args.shards:+.2f}s per shard; "
        f"per round: {', '.join(f'{p:+.1%}' for p in paired)})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": args.rows,
                    "shards": args.shards,
                    "overhead": overhead,
                    "extra_s": extra_s,
                    "runs": {v: [r.__dict__ | {"output_tail": ""} for r in rs] for v, rs in results.items()},
                },
                indent=2,
                default=str,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
