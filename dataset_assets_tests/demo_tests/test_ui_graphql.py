"""The demo as the UI shows it: real Dagster UIs on loopback, asked over GraphQL.

* The demo's materialisation (its own inputs, spec and instance layout, on a loopback image
  server; smaller shards so that it stays quick), then one shard re-run while its images are
  gone, as a user re-materialising it while its host is down; then ``dagster-webserver`` on the
  demo's instance must show the runs, the ``image_shards`` partitions with that shard failed (a
  0 % shard is never a healthy materialized partition), and the card's markdown.
* ``dagster dev`` with neither variable says in the catalog why it holds no dataset; other
  loaders get the error itself.
* ``python -m dataset_assets.demo --ui`` keeps its images served until its UI is stopped.

Field names are those of dagster_graphql's schema (``schema/roots/query.py``, ``asset_graph.py``,
``pipelines/pipeline.py``, ``external.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from dataset_assets.demo.build import DOWNLOAD, QUIET_CONSOLE, build_dataset
from dataset_assets.demo.prepare import DemoPaths, prepare_demo
from dataset_assets.spec import load_spec
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WEBSERVER_LIFETIME_S = 600  # `timeout` kills the webserver's process group after this, whatever happens
STARTUP_S = 180.0
STOP_S = 90.0  # the demo escalates to SIGKILL on dagster dev within ~45 s of Ctrl-C
SHARD_ROWS = 26  # 100 images + the demo's warts: four shards, the warts in the last (22/26 stored)
BROKEN = "00001"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _opener() -> urllib.request.OpenerDirector:
    # No proxy, whatever the environment says: requests stay on loopback.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UiClient:
    """GraphQL over HTTP to a Dagster UI on 127.0.0.1, served by ``process`` (or its children)."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.process = process

    def query(self, text: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with _opener().open(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]  # type: ignore[no-any-return]

    def wait_until_loaded(self) -> dict[str, Any]:
        """Poll /server_info, then the workspace until the code location has loaded (or failed)."""
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"webserver exited: {self.process.returncode}"
            try:
                with _opener().open(f"{self.base}/server_info", timeout=5) as response:
                    json.loads(response.read())
                entries = self.query(WORKSPACE)["workspaceOrError"]["locationEntries"]
                if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                    return entries[0]  # type: ignore[no-any-return]
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the webserver did not load its code location within {STARTUP_S} s")


class Webserver(UiClient):
    """A Dagster UI on 127.0.0.1 in its own process group: ``dagster-webserver`` or ``dagster dev``."""

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path, cwd: Path) -> None:
        port = _free_port()
        argv = [
            *("timeout", "-s", "KILL", str(WEBSERVER_LIFETIME_S)),
            *(sys.executable, "-m", *command, "-h", "127.0.0.1", "-p", str(port)),
        ]
        self._log = log.open("wb")
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        super().__init__(port, process)

    def stop(self) -> None:
        """SIGINT first (``dagster dev`` then stops its children and removes its temporary
        instance), then SIGKILL for the whole group."""
        for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


WEBSERVER = ["dagster_webserver", "-m", "dataset_assets.definitions"]


@contextlib.contextmanager
def webserver(
    env: Mapping[str, str], log: Path, command: list[str] = WEBSERVER, cwd: Path = PROJECT_ROOT
) -> Iterator[Webserver]:
    server = Webserver(command, env, log, cwd)
    try:
        yield server
    finally:
        server.stop()


WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message causes { message } } }
} } } }
"""

RUNS = """
{ runsOrError { __typename ... on Runs { results { runId status tags { key value } } } } }
"""

SHARDS = """
{ assetNodeOrError(assetKey: {path: ["image_shards"]}) { __typename ... on AssetNode {
    partitionKeys
    partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
        materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } }
    latestMaterializationByPartition(partitions: ["00000"]) {
        partition metadataEntries { label ... on FloatMetadataEntry { floatValue } } }
} } }
"""

CARD = """
{ assetOrError(assetKey: {path: ["dataset_card"]}) { __typename ... on Asset {
    assetMaterializations(limit: 1) { runId metadataEntries {
        __typename label ... on MarkdownMetadataEntry { mdStr } } }
} } }
"""


def _break_shard(paths: DemoPaths, key: str) -> int:
    """Make every URL of shard ``key`` a 404 and remove its files, so that it is fetched again."""
    spec = load_spec(paths.spec)
    urls = pq.read_table(Path(spec.shard_inputs_folder) / f"{key}.parquet").column("fetch_url").to_pylist()
    hidden = paths.root / "hidden_images"
    hidden.mkdir()
    moved = 0
    for url in urls:
        route, _, name = urlsplit(url).path.rpartition("/")
        if route == "/img" and (paths.images / name).exists():
            (paths.images / name).rename(hidden / name)
            moved += 1
    for path in paths.dataset.glob(f"{key}*"):
        path.unlink()
    return moved


def test_the_ui_shows_the_demo_runs_partitions_card_and_a_failed_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = DemoPaths(tmp_path / "demo_output")
    config = ServerConfig(latency_s=(0.001, 0.005), max_lifetime_s=WEBSERVER_LIFETIME_S)
    with ImageServer(root=paths.images, config=config) as server:
        prepare_demo(paths, server, 100)
        spec = yaml.safe_load(paths.spec.read_text())
        spec.update(number_sample_per_shard=SHARD_ROWS, processes_count=1)
        paths.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
        monkeypatch.setenv("DAGSTER_HOME", str(paths.dagster_home))
        monkeypatch.setenv("DATASET_SPEC", str(paths.spec))

        outcome = build_dataset(run_config=QUIET_CONSOLE)  # what the demo runs, on its instance
        assert outcome.checks_passed, outcome.failed_checks
        assert outcome.shards == 4 and outcome.images == 100
        # Dagster's event stream went to the demo's log file, not to the terminal.
        assert " - DEBUG - " not in capfd.readouterr().err
        events = paths.log_file.read_text()
        assert "RUN_START" in events and "STEP_SUCCESS" in events and "DEBUG" in events

        # The shard's host is down: a re-run of its partition stores nothing.
        assert _break_shard(paths, BROKEN) == SHARD_ROWS
        from dataset_assets.definitions import defs as load_defs

        with dg.DagsterInstance.get() as instance:
            job = load_defs().resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=DOWNLOAD,
                partition_key=BROKEN,
                raise_on_error=False,
                run_config=QUIET_CONSOLE,
            )
        assert not result.success
        stats = json.loads((paths.dataset / f"{BROKEN}_stats.json").read_text())
        assert stats["successes"] == 0 and stats["count"] == SHARD_ROWS

    # The demo's image server is gone; the UI reads the instance and the files only.
    env = {**os.environ, "DAGSTER_HOME": str(paths.dagster_home), "DATASET_SPEC": str(paths.spec)}
    with webserver(env, tmp_path / "webserver.log") as ui:
        location = ui.wait_until_loaded()
        assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location

        runs = ui.query(RUNS)["runsOrError"]
        assert runs["__typename"] == "Runs"
        statuses = sorted(run["status"] for run in runs["results"])
        # ingest, the four shards as one backfill-style run, verify + publish, the broken re-run
        assert statuses == ["FAILURE", "SUCCESS", "SUCCESS", "SUCCESS"], statuses
        failed_run = next(run for run in runs["results"] if run["status"] == "FAILURE")
        assert {"key": "dagster/partition", "value": BROKEN} in failed_run["tags"]

        node = ui.query(SHARDS)["assetNodeOrError"]
        assert node["__typename"] == "AssetNode"
        assert node["partitionKeys"] == ["00000", "00001", "00002", "00003"]
        partitions = node["assetPartitionStatuses"]
        assert partitions["__typename"] == "DefaultPartitionStatuses"
        assert BROKEN not in partitions["materializedPartitions"]
        assert partitions["failedPartitions"] == [BROKEN]
        assert partitions["materializedPartitions"] == ["00000", "00002", "00003"]
        assert node["partitionStats"]["numPartitions"] == 4
        assert node["partitionStats"]["numFailed"] == 1
        latest = node["latestMaterializationByPartition"]
        assert [event["partition"] for event in latest] == ["00000"]
        rate = {entry["label"]: entry.get("floatValue") for entry in latest[0]["metadataEntries"]}
        assert rate["success_rate"] == 1.0

        card = ui.query(CARD)["assetOrError"]
        assert card["__typename"] == "Asset"
        [materialization] = card["assetMaterializations"]
        entries = materialization["metadataEntries"]
        markdown = [e["mdStr"] for e in entries if e["__typename"] == "MarkdownMetadataEntry"]
        assert markdown and spec["card_title"] in markdown[0]


NODES = """
{ assetNodes { assetKey { path } description } }
"""


def test_plain_dagster_dev_says_why_it_shows_no_dataset(tmp_path: Path) -> None:
    """`dagster dev` with neither variable, on the project's workspace.yaml: one stand-in asset
    whose description names both variables (its temporary instance is made in ``tmp_path``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET_SPEC", "DAGSTER_HOME")}
    command = ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")]
    with webserver(env, tmp_path / "dagster_dev.log", command, cwd=tmp_path) as ui:
        location = ui.wait_until_loaded()
        assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
        nodes = ui.query(NODES)["assetNodes"]
    assert [node["assetKey"]["path"] for node in nodes] == [["dataset_spec_not_set"]]
    text = nodes[0]["description"]
    assert text.startswith("DATASET_SPEC is not set")
    assert "DAGSTER_HOME=$PWD/demo_output/dagster_home" in text
    assert "python -m dataset_assets.demo --ui" in text
    assert not list(tmp_path.glob(".tmp_dagster_home_*"))  # stopped cleanly: its temporary instance is gone


def test_other_loaders_get_the_error_itself(tmp_path: Path) -> None:
    """The webserver alone (as in a deployment), `dg check defs`, the CLI: a load error that says
    what to set, never a stand-in that would pass a check."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET_SPEC", "DAGSTER_IS_DEV_CLI")}
    home = tmp_path / "home"
    home.mkdir()
    env["DAGSTER_HOME"] = str(home)  # a persistent instance of its own, never the user's
    with webserver(env, tmp_path / "webserver.log") as ui:
        location = ui.wait_until_loaded()
    error = location["locationOrLoadError"]
    assert error["__typename"] == "PythonError", error
    text = " ".join([error["message"], *(cause["message"] for cause in error["causes"])])
    assert "DATASET_SPEC is not set" in text
    assert "DAGSTER_HOME" in text and "python -m dataset_assets.demo --ui" in text


def _wait_for_line(log: Path, prefix: str, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no line starting {prefix!r} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _answers(url: str) -> bool:
    try:
        with _opener().open(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _group_state(pgid: int) -> dict[int, str]:
    """Each live process of the group: its state (R, S, D, Z...), the kernel function it waits
    in, and its command line: what tells a hang at shutdown apart (which process waits, on what)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            wchan = (entry / "wchan").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = f"{fields[0]} {wchan} {argv[:120]}"
    return found


def _hang_report(pgid: int, log: Path) -> str:
    """The group's processes, then every Python thread's stack: SIGABRT makes each Python
    process of the group (started with PYTHONFAULTHANDLER=1) write its stacks into the log."""
    state = _group_state(pgid)
    for pid, what in state.items():
        if " -m dataset_assets.demo " in what or " -m dagster" in what:  # dev, webserver, daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
    time.sleep(3.0)
    return f"its process group: {state}; the log ends:\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-150:]
    )


def test_demo_ui_flag_serves_the_images_until_the_ui_stops(tmp_path: Path) -> None:
    """`python -m dataset_assets.demo --ui`: the demo, then `dagster dev` on its instance with the
    image server still up; one SIGINT to the demo stops the UI, then the image server."""
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET_SPEC", "DAGSTER_HOME")}
    env["PYTHONFAULTHANDLER"] = "1"  # a hang is reported with every thread's stack (_hang_report)
    argv = [sys.executable, "-m", "dataset_assets.demo", "--images", "60", "--dir", str(tmp_path / "demo")]
    argv += ["--ui", "--ui-port", str(port)]
    with log.open("wb") as out:
        demo = subprocess.Popen(
            ["timeout", "-s", "KILL", str(WEBSERVER_LIFETIME_S), *argv],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        image_url = _wait_for_line(log, "serving 60 images at ", demo, 120).split()[4].rstrip(";")
        _wait_for_line(log, "starting the UI: http://127.0.0.1:", demo, 300)
        ui = UiClient(port, demo)  # the demo's own `dagster dev`
        location = ui.wait_until_loaded()
        assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
        statuses = [run["status"] for run in ui.query(RUNS)["runsOrError"]["results"]]
        assert statuses == ["SUCCESS", "SUCCESS", "SUCCESS"], statuses  # ingest, one shard, publish
        assert _answers(f"{image_url}/img/000001.jpg")  # still served while the UI runs

        os.kill(demo.pid, signal.SIGINT)  # timeout sends it on to its group, as a terminal's Ctrl-C
        time.sleep(1.0)
        os.killpg(demo.pid, signal.SIGINT)  # an impatient second Ctrl-C, during the shutdown
        try:
            code = demo.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within {STOP_S:g}s of Ctrl-C; {_hang_report(demo.pid, log)}")
        assert code == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(10)
    text = log.read_text()
    assert "UI stopped; the image server stops now" in text
    assert " - DEBUG - " not in text.split("starting the UI:")[0]  # events went to the log file
    assert not _answers(f"{image_url}/img/000001.jpg")
    assert not _answers(f"http://127.0.0.1:{port}/server_info")
