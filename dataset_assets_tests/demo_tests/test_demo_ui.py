"""The demo's way to the UI, without starting one: the printed command, the messages the UI
shows when a variable is missing, and the terminal's progress lines."""

from __future__ import annotations

import io
import json
import os
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dataset_assets.definitions import TEMPORARY_INSTANCE_NOTICE, temporary_instance_notice
from dataset_assets.demo.__main__ import ui_command, ui_environment
from dataset_assets.demo.prepare import DemoPaths, instance_yaml
from dataset_assets.demo.progress import TerminalProgress
from dataset_assets.spec import DEMO_OUTPUT, DEMO_SPEC_TEMPLATE, SpecError, demo_hint, spec_path


def test_the_printed_command_opens_the_demo_instance_on_loopback(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path / "my demo")  # a space: the command must still be one shell line
    words = shlex.split(ui_command(paths))
    assert words[:2] == [f"DAGSTER_HOME={paths.dagster_home}", f"DATASET_SPEC={paths.spec}"]
    assert words[2:] == ["dagster", "dev", "-m", "dataset_assets.definitions", "-h", "127.0.0.1"]
    assert ui_environment(paths) == {"DAGSTER_HOME": str(paths.dagster_home), "DATASET_SPEC": str(paths.spec)}


def test_the_demo_instance_logs_every_event_to_its_file(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    config = yaml.safe_load(instance_yaml(paths.log_file))
    [handler] = config["python_logs"]["dagster_handler_config"]["handlers"].values()
    assert handler["filename"] == str(paths.log_file) and handler["level"] == "DEBUG"
    assert config["telemetry"] == {"enabled": False} and config["run_monitoring"]["enabled"] is True


def test_without_a_spec_the_error_names_both_variables_and_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATASET_SPEC", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as raised:
        spec_path()
    message = str(raised.value)
    assert message.startswith("DATASET_SPEC is not set")
    assert "DAGSTER_HOME=$PWD/demo_output/dagster_home DATASET_SPEC=demo_output/spec.yaml" in message
    assert "python -m dataset_assets.demo --ui" in message

    # Once the demo has written its output here, the hint is the demo's own command.
    paths = DemoPaths(tmp_path / DEMO_OUTPUT)
    paths.root.mkdir()
    paths.spec.write_text(DEMO_SPEC_TEMPLATE.read_text())
    assert ui_command(paths) in demo_hint(tmp_path)  # the same line the demo prints


def test_a_temporary_dev_instance_is_announced_in_every_description(monkeypatch: pytest.MonkeyPatch) -> None:
    assert temporary_instance_notice({"DAGSTER_IS_DEV_CLI": "1"}) is not None
    assert temporary_instance_notice({"DAGSTER_IS_DEV_CLI": "1", "DAGSTER_HOME": "/x"}) is None
    assert temporary_instance_notice({}) is None  # the CLI and tests: no UI to tell

    from dataset_assets.definitions import defs as load_defs

    monkeypatch.setenv("DATASET_SPEC", str(DEMO_SPEC_TEMPLATE))
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    graph = load_defs().resolve_asset_graph()
    descriptions = [graph.get(key).description or "" for key in graph.get_all_asset_keys()]
    assert len(descriptions) == 5
    assert all(d.startswith(TEMPORARY_INSTANCE_NOTICE) and "DAGSTER_HOME" in d for d in descriptions)

    monkeypatch.setenv("DAGSTER_HOME", "/somewhere")
    graph = load_defs().resolve_asset_graph()
    assert not any(
        (graph.get(key).description or "").startswith(TEMPORARY_INSTANCE_NOTICE)
        for key in graph.get_all_asset_keys()
    )


def test_progress_counts_fresh_stats_files_only(tmp_path: Path) -> None:
    dataset, inputs = tmp_path / "dataset", tmp_path / "shards"
    dataset.mkdir()
    inputs.mkdir()
    for key, rows in (("00000", 10), ("00001", 10), ("00002", 4)):
        pq.write_table(pa.table({"url": [f"u{i}" for i in range(rows)]}), inputs / f"{key}.parquet")
    # A previous run's stats for 00001: that shard is being redone, not done.
    stale = dataset / "00001_stats.json"
    stale.write_text(json.dumps({"count": 10, "successes": 10}))
    os.utime(stale, (1_000_000, 1_000_000))
    out = io.StringIO()
    progress = TerminalProgress(dataset, inputs, out)
    with progress.downloading(["00001", "00002"], total_shards=3):
        (dataset / "00002_stats.json").write_text(json.dumps({"count": 4, "successes": 3}))
    lines = out.getvalue().splitlines()
    assert lines[0] == "image_shards: downloading 2 of 3 shards (14 rows)"
    assert len(lines) == 2 and lines[1].startswith("  shard 00002: 3/4 images | 2/3 shards, 3 images")
    assert "ETA" in lines[1]  # 10 rows of 00001 still to go


def test_only_dagster_dev_gets_the_stand_in_without_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataset_assets.definitions import SPEC_NOT_SET
    from dataset_assets.definitions import defs as load_defs

    monkeypatch.delenv("DATASET_SPEC", raising=False)
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    with pytest.raises(SpecError, match="DATASET_SPEC is not set"):
        load_defs()  # dg check defs, the CLI, run workers: the error itself
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    graph = load_defs().resolve_asset_graph()
    [key] = graph.get_all_asset_keys()
    assert key.to_user_string() == SPEC_NOT_SET
    assert not graph.get(key).is_executable  # nothing to run: it only says what to set
    assert (graph.get(key).description or "").startswith("DATASET_SPEC is not set")
    # A spec that is set but broken is still an error, even under dagster dev.
    monkeypatch.setenv("DATASET_SPEC", "/nonexistent/spec.yaml")
    with pytest.raises(SpecError, match="cannot read dataset spec"):
        load_defs()
