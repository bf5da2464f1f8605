"""Scaling out on real parts, all on loopback: an S3 API (moto), PostgreSQL and dagster-daemon.

* S3 everywhere a path goes: the output folder's commits, the planner, the whole asset graph.
* ``deploy/dagster.yaml`` loads against Postgres (the ECS run launcher is built, AWS never called).
* A backfill of 4 shard partitions runs through the QueuedRunCoordinator and the DefaultRunLauncher
  of a separate ``dagster-daemon``, two runs at once, into S3; one run is killed midway and is
  recovered by re-running its partition (run retries, as configured in deploy/dagster.yaml).

Postgres comes from ``DATASET_ASSETS_TEST_PG`` (``.ci/run`` starts one); without it those tests skip.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster_aws.s3 import S3Resource

from dataset_assets.definitions import build_defs
from dataset_assets.demo.build import DOWNLOAD, INGEST, PUBLISH, build_dataset
from dataset_assets.engine import DownloadOptions
from dataset_assets.engine.reader import iter_input_shards
from dataset_assets.io.storage import OutputFolder, options_for
from dataset_assets.partitions import RANGE_END_TAG, RANGE_START_TAG, shards_partitions
from dataset_assets.planning import FilterSettings, filter_urls, read_manifest, sharding, write_shard_inputs
from dataset_assets.resources import s3_resource_from_env, spec_storage_options, storage_options
from dataset_assets.spec import spec_from_mapping
from dataset_assets_tests.fakeweb.images import corpus_images
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig
from dataset_assets_tests.scale_fixtures import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    PostgresDatabase,
    S3Server,
    running_daemon,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE = ROOT / "deploy" / "dagster.yaml"
SHARDS = 4
ROWS_PER_SHARD = 6
SLOW_S = 6  # the victim shard's last image takes this long, so its run can be killed midway
T = TypeVar("T")


def _s3_resource(server: S3Server) -> S3Resource:
    return S3Resource(
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _spec_values(url_list: str, output_folder: str, **overrides: Any) -> dict[str, Any]:
    values = {
        "url_list": url_list,
        "input_format": "csv",
        "caption_col": "caption",
        "output_folder": output_folder,
        "output_format": "webdataset",
        "number_sample_per_shard": ROWS_PER_SHARD,
        "image_size": 48,
        "processes_count": 1,
        "thread_count": 8,
        "timeout": 20,
        "allow_private_addresses": True,
        "success_rate_floor": 0.9,
    }
    values.update(overrides)
    return values


def _write_urls(path: Path, urls: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerows((url, f"test image number {i}") for i, url in enumerate(urls))


def _wait_for(condition: Callable[[], T], what: str, timeout_s: float = 240.0, log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.2)


# --- S3 through the engine and the planner ----------------------------------------------------


def test_output_folder_on_s3_never_shows_an_incomplete_final_object(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    out = OutputFolder(f"s3://{bucket}/ds", s3_server.storage_options)
    assert out.is_object_store
    out = pickle.loads(pickle.dumps(out))  # what a worker process would receive

    # A writer killed before it closes its file (SIGKILL: no cleanup code runs) leaves nothing.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, pickle, signal, sys\n"
            "out = pickle.loads(sys.stdin.buffer.read())\n"
            "_, handle = out.open_tmp('00000.tar')\n"
            "handle.write(b'x' * 100_000)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        input=pickle.dumps(out),
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert s3_server.keys(bucket) == []
    # A writer that fails (or is garbage-collected) while open: closing uploads its object, but
    # only under _tmp/, never under the final name.
    tmp, handle = out.open_tmp("00001.tar")
    with pytest.raises(RuntimeError), handle:
        handle.write(b"half a shard")
        raise RuntimeError("worker crashed")
    assert s3_server.keys(bucket) == [f"ds/{tmp.split('/ds/', 1)[1]}"]
    assert not out.exists("00001.tar")
    assert out.tmp_entries() == [tmp]

    # A finished one is copied to its final name whole, replacing an older version.
    for content in (b"first version", b"second version"):
        tmp, handle = out.open_tmp("00002.tar")
        with handle:
            handle.write(content)
        # The checksum is taken as the bytes go out, not by downloading the object again.
        assert out.sha256(tmp) == hashlib.sha256(content).hexdigest()
        out.commit(tmp, "00002.tar")
    assert out.fs.cat_file(out.path("00002.tar")) == b"second version"
    out.write_json_atomic("00002_stats.json", {"count": 1})
    assert out.read_json("00002_stats.json") == {"count": 1}

    # The files format commits a folder object by object.
    folder = out.tmp_path("00003")
    for name in ("a.jpg", "a.json"):
        with out.fs.open(f"{folder}/{name}", "wb") as f:
            f.write(name.encode())
    out.commit(folder, "00003")
    assert sorted(out.fs.ls(out.path("00003"), detail=False)) == [
        out.path("00003", n) for n in ("a.jpg", "a.json")
    ]

    out.clean_tmp()
    assert out.tmp_entries() == []
    assert s3_server.keys(bucket) == [
        "ds/00002.tar",
        "ds/00002_stats.json",
        "ds/00003/a.jpg",
        "ds/00003/a.json",
    ]


def test_planner_and_reader_on_s3(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    options = s3_server.storage_options
    client = s3_server.client()
    lines = [f"http://img.example.com/{i}.jpg" for i in range(23)] + [
        "HTTP://IMG.example.com/3.jpg#x",
        "ftp://no",
    ]
    client.put_object(Bucket=bucket, Key="in/a.txt", Body="\n".join(lines[:12]).encode())
    client.put_object(Bucket=bucket, Key="in/b.txt", Body="\n".join(lines[12:]).encode())

    filtered = f"s3://{bucket}/plan/filtered_urls.parquet"
    report = filter_urls(f"s3://{bucket}/in/", "txt", filtered, FilterSettings(), storage_options=options)
    assert (report.rows_in, report.rows_out) == (25, 23)
    assert report.removed["duplicate"] == 1 and report.removed["invalid_url"] == 1

    writes: list[str] = []
    footers: list[str] = []
    real_write, real_footer = sharding._Publisher.write, sharding._existing_fingerprint

    def spy_write(self: Any, name: str, table: pa.Table) -> None:
        writes.append(name)
        real_write(self, name, table)

    def spy_footer(fs: Any, path: str) -> Any:
        footers.append(path)
        return real_footer(fs, path)

    monkeypatch.setattr(sharding._Publisher, "write", spy_write)
    monkeypatch.setattr(sharding, "_existing_fingerprint", spy_footer)
    shards = f"s3://{bucket}/plan/shards"
    assert write_shard_inputs(filtered, shards, 10, storage_options=options) == ["00000", "00001", "00002"]
    assert len(writes) == 3
    manifest = read_manifest(shards, storage_options=options)
    assert manifest is not None and manifest["rows"] == 23 and manifest["source"] == filtered

    # A re-plan of the same rows: no upload, and no footer read either (the listing's stamps
    # match the manifest's).
    writes.clear()
    assert write_shard_inputs(filtered, shards, 10, storage_options=options) == ["00000", "00001", "00002"]
    assert writes == [] and footers == []

    # A shard object replaced behind our back is detected (its stamp changed) and rewritten.
    client.put_object(Bucket=bucket, Key="plan/shards/00001.parquet", Body=b"not parquet")
    write_shard_inputs(filtered, shards, 10, storage_options=options)
    assert writes == ["00001.parquet"]
    local = tmp_path / "00001.parquet"
    local.write_bytes(client.get_object(Bucket=bucket, Key="plan/shards/00001.parquet")["Body"].read())
    assert pq.read_table(local).num_rows == 10

    # A shorter plan removes the stale shard object.
    assert write_shard_inputs(filtered, shards, 20, storage_options=options) == ["00000", "00001"]
    assert s3_server.keys(bucket, "plan/shards/") == [
        "plan/shards/00000.parquet",
        "plan/shards/00001.parquet",
        "plan/shards/_manifest.json",
    ]

    # The engine's reader takes the same URL list from S3.
    read = list(
        iter_input_shards(
            f"s3://{bucket}/in/", DownloadOptions(number_sample_per_shard=10), storage_options=options
        )
    )
    assert [(s.shard_id, s.table.num_rows) for s in read] == [(0, 10), (1, 2), (2, 10), (3, 3)]


def test_s3_resource_becomes_storage_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "auto")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-secret")
    resource = s3_resource_from_env()

    @dg.asset
    def probe(s3: S3Resource) -> dict:
        return storage_options(s3)

    # Inside an entered instance: Dagster keeps the current instance's state storage in a context
    # variable, which a previous test may have left pointing at a disposed instance.
    with dg.instance_for_test() as instance:
        result = dg.materialize_to_memory([probe], resources={"s3": resource}, instance=instance)
    assert result.output_for_node("probe") == {
        "key": "minio",
        "secret": "minio-secret",
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "auto"},
        "config_kwargs": {"retries": {"max_attempts": 5, "mode": "standard"}},
    }
    assert storage_options(S3Resource(max_attempts=0)) == {}

    # Only S3 locations get them: an https URL list next to an S3 output is read as it is.
    spec = spec_from_mapping(_spec_values("https://lists.example.com/urls.csv", "s3://bucket/ds"))
    per_protocol = spec_storage_options(spec, S3Resource(endpoint_url="http://127.0.0.1:9000"))
    assert options_for("s3://bucket/ds", per_protocol)["endpoint_url"] == "http://127.0.0.1:9000"
    assert options_for("https://lists.example.com/urls.csv", per_protocol) == {}
    assert spec_storage_options(spec_from_mapping(_spec_values("/data/u.csv", "/data/ds")), resource) is None


def test_asset_graph_on_s3(s3_server: S3Server, tmp_path: Path) -> None:
    """URL list, plan and dataset on S3, with the s3 resource; the checks pass; a re-run skips."""
    bucket = s3_server.new_bucket()
    images = corpus_images(2 * ROWS_PER_SHARD, seed=11)
    with ImageServer(images=images, config=ServerConfig(max_lifetime_s=300)) as server:
        _write_urls(tmp_path / "urls.csv", [server.url(name) for name in sorted(images)])
        s3_server.client().upload_file(str(tmp_path / "urls.csv"), bucket, "in/urls.csv")
        spec = spec_from_mapping(
            _spec_values(f"s3://{bucket}/in/urls.csv", f"s3://{bucket}/ds", sizes_json=True)
        )
        defs = build_defs(spec, _s3_resource(s3_server))
        with dg.instance_for_test() as instance:
            outcome = build_dataset(defs, instance)
            assert outcome.checks_passed, outcome.failed_checks
            assert (outcome.shards, outcome.images) == (2, 2 * ROWS_PER_SHARD)
            requests = server.stats.total_requests
            job = defs.resolve_implicit_global_asset_job_def()
            job.execute_in_process(instance=instance, asset_selection=DOWNLOAD, partition_key="00001")
            assert server.stats.total_requests == requests  # complete on S3: not downloaded again
    keys = s3_server.keys(bucket, "ds/")
    for shard in ("00000", "00001"):
        assert {f"ds/{shard}.tar", f"ds/{shard}.parquet", f"ds/{shard}_stats.json"} <= set(keys)
    assert "ds/DATASET_CARD.md" in keys and "ds/_plan/shards/_manifest.json" in keys
    assert not [k for k in keys if k.startswith("ds/_tmp/")]
    # The trainers' counts and the reports, as objects; the root's other json are shard stats.
    body = s3_server.client().get_object
    sizes = json.loads(body(Bucket=bucket, Key="ds/sizes.json")["Body"].read())
    assert sizes == {"00000.tar": ROWS_PER_SHARD, "00001.tar": ROWS_PER_SHARD}
    assert body(Bucket=bucket, Key="ds/__len__")["Body"].read() == f"{2 * ROWS_PER_SHARD}\n".encode()
    assert "ds/_reports/verification.json" in keys and "ds/verification.json" not in keys
    root_json = [k[3:] for k in keys if k.count("/") == 1 and k.endswith(".json") and k != "ds/sizes.json"]
    assert sorted(int(name.split("_")[0]) for name in root_json) == [0, 1]
    # The card hashed the URL list where it lives (on S3, through the s3 resource's options).
    card = body(Bucket=bucket, Key="ds/DATASET_CARD.md")["Body"].read().decode()
    assert hashlib.sha256((tmp_path / "urls.csv").read_bytes()).hexdigest() in card


# --- Postgres, deploy/dagster.yaml and the daemon ----------------------------------------------


def _aws_test_environment(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> None:
    """Credentials and region in the environment, so that building boto3 clients (the ECS run
    launcher, the compute log manager) never walks the credential chain to the metadata service."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def test_deploy_instance_loads(
    postgres_db: PostgresDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DEPLOY_INSTANCE.read_text())
    _aws_test_environment(
        monkeypatch,
        {
            **postgres_db.environment(),
            "DAGSTER_COMPUTE_LOG_BUCKET": "dagster-logs",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "not-used",
            "AWS_SECRET_ACCESS_KEY": "not-used",
            "AWS_EC2_METADATA_DISABLED": "true",
            # Any request would go here (nothing listens): the test must not reach AWS.
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        },
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, EcsRunLauncher)
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
        settings = instance.get_concurrency_config().run_queue_config
        assert settings is not None and settings.max_concurrent_runs == 64
        assert {limit["key"] for limit in settings.tag_concurrency_limits} == {"dagster/backfill"}
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        # The storage works: partitions registered in chunks land in Postgres.
        instance.add_dynamic_partitions(shards_partitions.name, [f"{i:05d}" for i in range(2500)])
        assert len(instance.get_dynamic_partitions(shards_partitions.name)) == 2500


def _test_instance_config() -> dict[str, Any]:
    """deploy/dagster.yaml with the parts that need AWS swapped for local ones: runs are launched
    as local processes (DefaultRunLauncher), logs stay on disk, and at most 2 runs go at once."""
    config = yaml.safe_load(DEPLOY_INSTANCE.read_text())
    del config["run_launcher"], config["compute_logs"]
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    config["concurrency"]["runs"]["max_concurrent_runs"] = 2
    config["concurrency"]["runs"]["tag_concurrency_limits"][0]["limit"] = 2
    config["run_retries"]["max_retries"] = 1
    config["run_monitoring"]["poll_interval_seconds"] = 5
    return config


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}
"""


def _launch_backfill(instance: dg.DagsterInstance, keys: list[str]) -> str:
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="dataset_assets.definitions", working_directory=str(ROOT)),
        location_name="dataset_assets",
    )
    params = {
        "assetSelection": [{"path": ["image_shards"]}],
        "partitionNames": keys,
        "title": "scale-out test",
    }
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        result = execute_dagster_graphql(
            workspace.create_request_context(), LAUNCH_BACKFILL, {"params": params}
        )
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _run_partition(run: dg.DagsterRun) -> str:
    """The one partition a backfill run covers: a backfill policy's runs carry it as a range."""
    first, last = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if first is not None:
        assert first == last, run.tags
        return first
    return run.tags["dagster/partition"]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        message = event.message or ""
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ", 1)[1].split(")", 1)[0])
    return None


@pytest.mark.timeout(600)
def test_backfill_runs_concurrently_through_the_daemon_into_s3(
    s3_server: S3Server, postgres_db: PostgresDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    keys = [f"{i:05d}" for i in range(SHARDS)]
    victim = keys[-1]
    images = corpus_images(SHARDS * ROWS_PER_SHARD, seed=5)
    names = sorted(images)
    # Each image takes about a second, so a shard run lasts seconds and two of them overlap.
    config = ServerConfig(latency_s=(1.0, 1.5), max_lifetime_s=600)
    with ImageServer(images=images, config=config) as server:
        # The victim shard's last row is slow, so its run is surely midway when it is killed.
        urls = [server.url(name) for name in names[:-1]] + [server.url_for(f"/slow/{SLOW_S}/{names[-1]}")]
        _write_urls(tmp_path / "urls.csv", urls)
        client = s3_server.client()
        client.upload_file(str(tmp_path / "urls.csv"), bucket, "in/urls.csv")
        # One shard per run, so that runs overlap and one shard's run can be killed on its own
        # (several shards a run are covered in test_definitions).
        values = _spec_values(
            f"s3://{bucket}/in/urls.csv", f"s3://{bucket}/ds", thread_count=2, shards_per_run=1
        )
        client.put_object(Bucket=bucket, Key="specs/test.yaml", Body=yaml.safe_dump(values).encode())

        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(_test_instance_config()))
        workspace = home / "workspace.yaml"
        workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "python_module": {
                                "module_name": "dataset_assets.definitions",
                                "location_name": "dataset_assets",
                                "working_directory": str(ROOT),
                            }
                        }
                    ]
                }
            )
        )
        # What every Dagster process of a deployment gets: instance, Postgres, spec (on S3), S3.
        env = {
            **os.environ,
            **postgres_db.environment(),
            **s3_server.environment(),
            "DAGSTER_HOME": str(home),
            "DATASET_SPEC": f"s3://{bucket}/specs/test.yaml",
        }
        # This process plays the webserver below (it launches the backfill), so it gets the
        # same environment, and loads the definitions afresh with this spec.
        for name in [*postgres_db.environment(), *s3_server.environment(), "DATASET_SPEC"]:
            monkeypatch.setenv(name, env[name])
        monkeypatch.delitem(sys.modules, "dataset_assets.definitions", raising=False)

        spec = spec_from_mapping(values)
        defs = build_defs(spec, _s3_resource(s3_server))
        log = home / "daemon.log"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            job = defs.resolve_implicit_global_asset_job_def()
            job.execute_in_process(instance=instance, asset_selection=INGEST)
            assert instance.get_dynamic_partitions(shards_partitions.name) == keys

            # The runbook's way to start a backfill: GraphQL launchPartitionBackfill (here executed
            # in-process, as the webserver would). It waits in Postgres for the daemon.
            backfill_id = _launch_backfill(instance, keys)
            with running_daemon(home, workspace, env) as daemon:

                def victim_run() -> dg.DagsterRun | None:
                    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                    return next((r for r in runs if _run_partition(r) == victim), None)

                # Kill the victim's run worker (and its engine process) while it fetches.
                _wait_for(
                    lambda: any(p.startswith("/slow/") for p in server.stats.paths), "the slow row", log=log
                )
                run = _wait_for(victim_run, "the victim run to be STARTED", log=log)
                pid = _wait_for(
                    lambda: _run_worker_pid(instance, run.run_id), "the run worker's pid", log=log
                )
                os.kill(pid, signal.SIGKILL)  # like the OOM killer; its engine worker exits when orphaned
                assert not [k for k in s3_server.keys(bucket, "ds/") if k.startswith(f"ds/{victim}")]
                # DefaultRunLauncher cannot tell that a worker died (the ECS and K8s launchers
                # can); do what run monitoring does for them. run_retries then re-runs the shard.
                instance.report_run_failed(instance.get_run_by_id(run.run_id))

                def finished() -> bool:
                    assert daemon.poll() is None, "dagster-daemon exited"
                    busy = instance.get_runs(
                        filters=dg.RunsFilter(
                            tags={"dagster/backfill": backfill_id},
                            statuses=[
                                dg.DagsterRunStatus.QUEUED,
                                dg.DagsterRunStatus.NOT_STARTED,
                                dg.DagsterRunStatus.STARTING,
                                dg.DagsterRunStatus.STARTED,
                            ],
                        )
                    )
                    done = instance.get_materialized_partitions(dg.AssetKey("image_shards"))
                    return not busy and done == set(keys)

                _wait_for(finished, "every shard to be materialized", timeout_s=300, log=log)

            records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            by_status = collections.Counter(r.dagster_run.status for r in records)
            assert by_status == {dg.DagsterRunStatus.SUCCESS: SHARDS, dg.DagsterRunStatus.FAILURE: 1}
            successes = collections.Counter(
                _run_partition(r.dagster_run)
                for r in records
                if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            )
            assert successes == dict.fromkeys(keys, 1)
            retry = next(
                r.dagster_run
                for r in records
                if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
                and _run_partition(r.dagster_run) == victim
            )
            assert retry.tags.get("dagster/parent_run_id") == run.run_id  # the run retry, from the daemon

            # Two runs at a time: they overlapped, and the queue never let a third one in.
            intervals = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
            assert len(intervals) == SHARDS + 1
            assert _max_overlap(intervals) == 2

            # Each shard is in S3 exactly once, complete; nothing half-written, no debris; beside
            # them only the sample count (and its cache) the runs published.
            data = [k for k in s3_server.keys(bucket, "ds/") if not k.startswith("ds/_plan/")]
            assert data == sorted(
                [f"ds/{k}{suffix}" for k in keys for suffix in (".parquet", ".tar", "_stats.json")]
                + ["ds/__len__", "ds/_reports/sample_counts.json"]
            )
            fetched = collections.Counter(p for p in server.stats.paths if p.startswith("/img/"))
            victim_rows = {f"/img/{name}" for name in names[-ROWS_PER_SHARD:]}
            assert all(n == 1 for path, n in fetched.items() if path not in victim_rows)  # no shard redone

            # The dataset verifies.
            result = job.execute_in_process(instance=instance, asset_selection=PUBLISH, raise_on_error=False)
            failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
            assert result.success and not failed, failed
            verified = result.asset_materializations_for_node("dataset_verification")[0].metadata
            assert verified["shards_complete"].value == SHARDS
            assert verified["successes"].value == SHARDS * ROWS_PER_SHARD
