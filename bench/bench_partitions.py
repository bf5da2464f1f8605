"""Scale figures for a Postgres-backed deployment: partitions, status queries, concurrent shard runs.

Usage (from the repository root, with a PostgreSQL reachable on loopback)::

    eval "$(.ci/postgres start)"          # or any server: --pg postgresql://user@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.bench_partitions --partitions 100000 --materialized 20000
    .venv/bin/python -m bench.bench_partitions --skip-partitions --runs-at-once 1 2 --shards 8 --rows 250

Each part uses a fresh database (created and dropped here) on the server given by ``--pg`` or
``DATASET_ASSETS_TEST_PG``.

Part 1, partitions (``dagster.DagsterInstance`` on Postgres storage, in this process):

* register ``--partitions`` dynamic partition keys in chunks of 10 000 (as ``url_shards`` does);
* ``get_dynamic_partitions`` of all of them, and ``has_dynamic_partition`` of one;
* record ``--materialized`` partition materializations (runless events: the event-log write rate);
* ``get_materialized_partitions`` and ``get_status_by_partition`` over every key (first call builds
  Dagster's partition status cache, the second reads it).

Part 2, runs at once (the real thing, on this machine): a loopback image server, a DAGSTER_HOME on
Postgres with the QueuedRunCoordinator at ``max_concurrent_runs`` = each of ``--runs-at-once``,
``dagster-daemon run`` with the DefaultRunLauncher, ``--shards`` shard partitions submitted by
``dagster job backfill``; images/s is successes / (last run end - first run start), from the run
records, so daemon start-up is not counted but every run's start-up is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
REGISTER_CHUNK = 10_000
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the server; dropped afterwards. Yields its URL."""
    import psycopg2

    host = urlsplit(server_url).hostname or ""
    if not (host.startswith("127.") or host == "localhost"):
        raise SystemExit(f"refusing a non-loopback PostgreSQL host: {host!r}")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(server_url)._replace(path=f"/{name}").geturl()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def storage_config(db_url: str) -> dict[str, Any]:
    u = urlsplit(db_url)
    return {
        "postgres": {
            "postgres_db": {
                "hostname": u.hostname,
                "port": u.port or 5432,
                "username": u.username or "postgres",
                "password": u.password or "",
                "db_name": u.path.lstrip("/"),
                "scheme": "postgresql+psycopg2",
            }
        }
    }


# --------------------------------------------------------------------------- part 1
def bench_partitions(server_url: str, partitions: int, materialized: int) -> None:
    import dagster as dg

    from dataset_assets.partitions import shards_partitions

    asset_key = dg.AssetKey("image_shards")
    keys = [f"{i:05d}" if i < 100_000 else f"{i:06d}" for i in range(partitions)]
    rows: list[tuple[str, str]] = []
    with fresh_database(server_url) as db, tempfile.TemporaryDirectory(prefix="bench-home-") as home:
        Path(home, "dagster.yaml").write_text(
            yaml.safe_dump({"storage": storage_config(db), "telemetry": {"enabled": False}})
        )
        with dg.DagsterInstance.from_config(home) as instance:
            chunk_times = []
            for start in range(0, len(keys), REGISTER_CHUNK):
                chunk = keys[start : start + REGISTER_CHUNK]
                _, seconds = timed(
                    lambda chunk=chunk: instance.add_dynamic_partitions(shards_partitions.name, chunk)
                )
                chunk_times.append(seconds)
            rows.append(
                (
                    f"register {partitions:,} keys ({len(chunk_times)} chunks of {REGISTER_CHUNK:,})",
                    f"{sum(chunk_times):.2f} s (chunk median {statistics.median(chunk_times):.2f} s)",
                )
            )
            got, seconds = timed(lambda: instance.get_dynamic_partitions(shards_partitions.name))
            assert len(got) == partitions
            rows.append((f"get_dynamic_partitions ({partitions:,})", f"{seconds:.3f} s"))
            _, seconds = timed(lambda: instance.has_dynamic_partition(shards_partitions.name, keys[-1]))
            rows.append(("has_dynamic_partition (one key)", f"{seconds * 1000:.1f} ms"))

            started = time.perf_counter()
            for key in keys[:materialized]:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key, partition=key))
            seconds = time.perf_counter() - started
            rows.append(
                (
                    f"record {materialized:,} partition materializations",
                    f"{seconds:.1f} s ({materialized / seconds:,.0f} events/s, one at a time)",
                )
            )
            done, seconds = timed(lambda: instance.get_materialized_partitions(asset_key))
            assert len(done) == materialized
            rows.append(
                (f"get_materialized_partitions ({materialized:,} of {partitions:,})", f"{seconds:.3f} s")
            )
            for label in ("first call: builds the status cache", "second call: cached"):
                statuses, seconds = timed(
                    lambda: instance.get_status_by_partition(asset_key, keys, shards_partitions)
                )
                rows.append((f"get_status_by_partition ({partitions:,} keys, {label})", f"{seconds:.3f} s"))
            assert sum(1 for s in statuses.values() if s is not None) == materialized
    print_rows("Postgres: dynamic partitions and their status", rows)


# --------------------------------------------------------------------------- part 2
def bench_runs_at_once(
    server_url: str, runs_at_once: list[int], shards: int, rows_per_shard: int, latency: float
) -> None:
    from bench._common import ensure_corpus, start_server

    images = shards * rows_per_shard
    corpus = ensure_corpus(images)
    server = start_server(corpus, hosts=4, latency=(latency / 2, latency * 1.5), lifetime_s=3600)
    results = []
    try:
        for limit in runs_at_once:
            with fresh_database(server_url) as db, tempfile.TemporaryDirectory(prefix="bench-runs-") as work:
                results.append(
                    (limit, *measure_backfill(Path(work), db, server, limit, shards, rows_per_shard))
                )
    finally:
        server.stop()
    rows = []
    for limit, wall, successes, run_walls in results:
        rows.append(
            (
                f"{limit} run(s) at once, {shards} shards x {rows_per_shard} rows",
                f"{successes / wall:.1f} images/s ({successes} images in {wall:.1f} s; "
                f"run wall median {statistics.median(run_walls):.1f} s)",
            )
        )
    print_rows(f"Concurrent shard runs on this machine ({os.cpu_count()} cores), DefaultRunLauncher", rows)


def measure_backfill(
    work: Path, db_url: str, server: Any, limit: int, shards: int, rows_per_shard: int
) -> tuple[float, int, list[float]]:
    import dagster as dg

    from bench._common import clean_env, write_url_list

    home = work / "dagster_home"
    home.mkdir()
    write_url_list(work / "urls.parquet", server, shards * rows_per_shard)
    spec = {
        "url_list": str(work / "urls.parquet"),
        "input_format": "parquet",
        "url_col": "URL",
        "caption_col": "TEXT",
        "output_folder": str(work / "dataset"),
        "number_sample_per_shard": rows_per_shard,
        "image_size": 256,
        "resize_mode": "keep_ratio",
        "processes_count": 1,
        "thread_count": 32,
        "timeout": 20,
        "allow_private_addresses": True,
    }
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    instance_config = {
        "storage": storage_config(db_url),
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        "concurrency": {"runs": {"max_concurrent_runs": limit}},
        "telemetry": {"enabled": False},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"python_module": {"module_name": "dataset_assets.definitions", "location_name": "ds"}}
                ]
            }
        )
    )
    env = clean_env(DAGSTER_HOME=str(home), DATASET_SPEC=str(work / "spec.yaml"))
    python = sys.executable
    materialize = ["asset", "materialize", "-m", "dataset_assets.definitions"]
    subprocess.run(
        [python, "-m", "dagster", *materialize, "--select", "filtered_urls,url_shards"],
        env=env,
        cwd=str(ROOT),
        check=True,
        capture_output=True,
        timeout=300,
    )
    timeout = shutil.which("timeout") or "timeout"
    log = (home / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [timeout, "-k", "10", "1800", python, "-m", "dagster._daemon", "run", "-w", str(workspace)],
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        partition_keys = ",".join(f"{i:05d}" for i in range(shards))
        backfill = ["job", "backfill", "-w", str(workspace), "-l", "ds", "-j", "download_shards"]
        subprocess.run(
            [python, "-m", "dagster", *backfill, "--partitions", partition_keys, "--noprompt"],
            env=env,
            cwd=str(ROOT),
            check=True,
            capture_output=True,
            timeout=300,
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 1800
            while True:
                records = instance.get_run_records(filters=dg.RunsFilter(job_name="download_shards"))
                if len(records) == shards and all(r.dagster_run.is_finished for r in records):
                    break
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"runs did not finish; see {home / 'daemon.log'}")
                time.sleep(0.5)
            failed = [
                r.dagster_run.run_id for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
            ]
            if failed:
                raise SystemExit(f"{len(failed)} run(s) failed, e.g. {failed[0]}")
            wall = max(r.end_time for r in records) - min(r.start_time for r in records)
            successes = 0
            for key in instance.get_dynamic_partitions("shards"):
                record = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_shards"), asset_partitions=[key]),
                    limit=1,
                ).records[0]
                successes += int(record.asset_materialization.metadata["successes"].value)
            run_walls = [r.end_time - r.start_time for r in records]
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(30)
        log.close()
    return wall, successes, run_walls


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n{title}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=os.environ.get("DATASET_ASSETS_TEST_PG"), help="server URL")
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--materialized", type=int, default=20_000)
    parser.add_argument("--skip-partitions", action="store_true")
    parser.add_argument("--runs-at-once", type=int, nargs="*", default=[], help="e.g. 1 2")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rows", type=int, default=250, help="rows per shard")
    parser.add_argument("--latency", type=float, default=0.05, help="mean image server latency, s")
    args = parser.parse_args()
    if not args.pg:
        raise SystemExit(
            'no PostgreSQL: pass --pg or set DATASET_ASSETS_TEST_PG (eval "$(.ci/postgres start)")'
        )
    if not args.skip_partitions:
        bench_partitions(args.pg, args.partitions, args.materialized)
    if args.runs_at_once:
        bench_runs_at_once(args.pg, args.runs_at_once, args.shards, args.rows, args.latency)


if __name__ == "__main__":
    main()
