"""The asset graph on real Dagster instances, real DuckDB and a real loopback image server."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from dataset_assets.definitions import build_defs
from dataset_assets.demo.build import DOWNLOAD, INGEST, PUBLISH, build_dataset
from dataset_assets.demo.prepare import write_url_list
from dataset_assets.partitions import RANGE_END_TAG, RANGE_START_TAG, range_tags, shards_partitions
from dataset_assets.schedules import missing_shard_keys, resume_missing_shards
from dataset_assets.spec import SpecError, load_spec, spec_from_mapping
from dataset_assets_tests.fakeweb.images import corpus_images
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

IMAGES = 24
# 24 images + 9 warts - 5 filtered = 28 rows -> 4 shards of 7. Not 8: the last shard would then
# hold the 4 warts alone (0 images), which image_shards' success-rate gate rightly fails.
SHARD_SIZE = 7


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    # Some latency, so that a shard run lasts long enough to be killed in the middle.
    config = ServerConfig(latency_s=(0.03, 0.06), max_lifetime_s=600)
    with ImageServer(images=corpus_images(IMAGES, seed=7), config=config) as running:
        yield running


def _spec_values(server: ImageServer, root: Path) -> dict:
    names = sorted(corpus_images(IMAGES, seed=7))
    write_url_list(root / "urls.csv", server, names)
    return {
        "url_list": str(root / "urls.csv"),
        "input_format": "csv",
        "caption_col": "caption",
        "save_additional_columns": ["source_id"],
        "output_folder": str(root / "dataset"),
        "output_format": "webdataset",
        "number_sample_per_shard": SHARD_SIZE,
        "image_size": 64,
        "processes_count": 1,
        "thread_count": 8,
        "timeout": 5,
        "min_caption_length": 3,
        "allow_private_addresses": True,
        "success_rate_floor": 0.5,
    }


def _job(defs: dg.Definitions) -> dg.JobDefinition:
    return defs.resolve_implicit_global_asset_job_def()


def _keys(folder: Path) -> list[tuple[str, str, str | None]]:
    rows = []
    for path in sorted(folder.glob("*.parquet")):
        rows += [(r["key"], r["url"], r["status"]) for r in pq.read_table(path).to_pylist()]
    return sorted(rows)


def test_definitions_load_lazily_and_only_with_an_explicit_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataset_assets.definitions import defs as load_defs
    from dataset_assets.spec import DEMO_SPEC_TEMPLATE

    monkeypatch.delenv("DATASET_SPEC", raising=False)
    with pytest.raises(SpecError, match="DATASET_SPEC is not set"):
        load_defs()  # no silent fallback to the demo spec
    monkeypatch.setenv("DATASET_SPEC", str(DEMO_SPEC_TEMPLATE))
    defs = load_defs()
    dg.Definitions.validate_loadable(defs)
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "filtered_urls",
        "url_shards",
        "image_shards",
        "dataset_verification",
        "dataset_card",
    }


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"unknown key.*imagesize"):
        spec_from_mapping({"url_list": "x", "output_folder": "y", "imagesize": 3})
    with pytest.raises(SpecError, match="resize_mode='wide'"):
        spec_from_mapping({"url_list": "x", "output_folder": "y", "resize_mode": "wide"})
    with pytest.raises(SpecError, match="image_size"):
        spec_from_mapping({"url_list": "x", "output_folder": "y", "image_size": "big"})
    bad = tmp_path / "spec.yaml"
    bad.write_text(yaml.safe_dump({"output_folder": "y"}))
    with pytest.raises(SpecError, match="url_list"):
        load_spec(bad)


def test_whole_graph_then_resume_and_idempotent_registration(server: ImageServer, tmp_path: Path) -> None:
    spec = spec_from_mapping(_spec_values(server, tmp_path))
    defs = build_defs(spec)
    with dg.instance_for_test() as instance:
        outcome = build_dataset(defs, instance)
        assert outcome.checks_passed, outcome.failed_checks
        assert outcome.shards == 4 and outcome.rows == 28 and outcome.images == 24

        ingest = instance.fetch_materializations(dg.AssetKey("filtered_urls"), limit=1).records[0]
        metadata = ingest.asset_materialization.metadata
        assert metadata["rows_in"].value == 33
        assert metadata["removed_invalid_url"].value == 2
        assert metadata["removed_duplicate"].value == 2
        assert metadata["removed_min_caption_length"].value == 1
        assert metadata["rows_out"].value == 28
        assert instance.get_dynamic_partitions(shards_partitions.name) == ["00000", "00001", "00002", "00003"]

        shard = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_shards"), asset_partitions=["00003"]),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
        assert shard["count"].value == "7 rows" and 0 <= shard["success_rate"].value <= 1
        assert "dagster/row_count" not in shard  # one shard's count is not the dataset's

        # The four shards were one run (a backfill's range) sharing one worker pool, and each
        # partition still got its own metadata.
        records = instance.fetch_materializations(dg.AssetKey("image_shards"), limit=10).records
        assert len(records) == 4 and len({r.run_id for r in records}) == 1
        assert [r.asset_materialization.metadata["count"].value for r in records] == ["7 rows"] * 4
        pools = {
            frozenset(
                json.loads((tmp_path / "dataset" / f"0000{i}_stats.json").read_text())["rows_per_worker"]
            )
            for i in range(4)
        }
        assert len(pools) == 1

        card = (tmp_path / "dataset" / "DATASET_CARD.md").read_text()
        assert "| images stored | 24 |" in card and "X-Robots-Tag" in card

        # Re-materialising the ingest adds no partition; a second build downloads nothing.
        requests_before = server.stats.total_requests
        _job(defs).execute_in_process(instance=instance, asset_selection=INGEST)
        assert len(instance.get_dynamic_partitions(shards_partitions.name)) == 4
        assert missing_shard_keys(instance) == []
        _job(defs).execute_in_process(instance=instance, asset_selection=DOWNLOAD, partition_key="00001")
        assert server.stats.total_requests == requests_before


def test_killed_shard_is_completed_by_materializing_missing(server: ImageServer, tmp_path: Path) -> None:
    reference_root, resumed_root = tmp_path / "reference", tmp_path / "resumed"
    for root in (reference_root, resumed_root):
        root.mkdir()
    reference = spec_from_mapping(_spec_values(server, reference_root))
    with dg.instance_for_test() as instance:
        assert build_dataset(build_defs(reference), instance).checks_passed

    values = _spec_values(server, resumed_root)
    spec_file = resumed_root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(values))
    home = resumed_root / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATASET_SPEC": str(spec_file)}
    cli = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "dataset_assets.definitions"]
    subprocess.run(
        [*cli, "--select", "filtered_urls,url_shards"], env=env, check=True, capture_output=True, timeout=300
    )
    subprocess.run(
        [*cli, "--select", "image_shards", "--partition", "00000"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )

    # Shard 00001 is killed (SIGKILL, whole process group) as soon as its files are being written.
    run_config = resumed_root / "one_connection.yaml"
    run_config.write_text(yaml.safe_dump({"resources": {"dataset": {"config": {"thread_count": 1}}}}))
    victim = subprocess.Popen(
        [*cli, "--select", "image_shards", "--partition", "00001", "-c", str(run_config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    tmp = resumed_root / "dataset" / "_tmp"
    while time.monotonic() < deadline and not any(tmp.glob("*00001*")):
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (resumed_root / "dataset" / "00001_stats.json").exists()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The killed run stays STARTED until run monitoring (dagster-daemon) notices its dead
        # worker and fails it; do here what the monitoring daemon does.
        (dead,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert dead.tags["dagster/partition"] == "00001"
        instance.report_run_failed(dead)
        assert "00001" in missing_shard_keys(instance)
        assert "00000" not in missing_shard_keys(instance)
        # What the resume schedule would launch:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.datetime(2026, 1, 1),
            repository_def=build_defs(spec_from_mapping(values)).get_repository_def(),
        )
        requested = [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in resume_missing_shards(context)]
        # 00001 failed and 00002-00003 never ran: one run for the three of them.
        assert missing_shard_keys(instance) == ["00001", "00002", "00003"]
        assert requested == [("00001", "00003")]
        outcome = build_dataset(build_defs(spec_from_mapping(values)), instance)
        assert outcome.checks_passed, outcome.failed_checks
    assert _keys(resumed_root / "dataset") == _keys(reference_root / "dataset")


def test_corrupted_tar_fails_the_blocking_checks(server: ImageServer, tmp_path: Path) -> None:
    spec = spec_from_mapping(_spec_values(server, tmp_path))
    defs = build_defs(spec)
    with dg.instance_for_test() as instance:
        assert build_dataset(defs, instance).checks_passed
        tar_path = tmp_path / "dataset" / "00002.tar"
        with tarfile.open(tar_path) as tar:
            first_image = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        data = bytearray(tar_path.read_bytes())
        data[first_image.offset_data : first_image.offset_data + 400] = b"\0" * 400
        tar_path.write_bytes(bytes(data))

        result = _job(defs).execute_in_process(
            instance=instance, asset_selection=PUBLISH, raise_on_error=False
        )
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert not result.success
    assert {"samples_decode", "checksums_match"} <= failed
    assert "keys_unique" not in failed
    assert result.asset_materializations_for_node("dataset_card") == []  # blocked


def _logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def _input_check(instance: dg.DagsterInstance) -> dict[str, bool]:
    """Each registered partition's latest ``shard_input_current`` outcome."""
    key = dg.AssetCheckKey(dg.AssetKey("image_shards"), "shard_input_current")
    registered = set(instance.get_dynamic_partitions(shards_partitions.name))
    latest: dict[str, bool] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=1000):
        evaluation = record.event.asset_check_evaluation if record.event is not None else None
        if record.partition in registered and evaluation is not None:
            latest.setdefault(record.partition, evaluation.passed)  # newest first
    return latest


def test_replan_with_a_denied_domain_downloads_exactly_the_changed_shards(tmp_path: Path) -> None:
    """Shards 00000-00001 keep their rows, 00002 gets other rows, 00003 leaves the plan."""
    names = sorted(corpus_images(16, seed=3))
    config = ServerConfig(extra_hosts=1, max_lifetime_s=600)
    with ImageServer(images=corpus_images(16, seed=3), config=config) as web:
        denied = web.config.hosts[1]  # 127.0.0.2
        urls = [web.url(n) for n in names[:8]]
        urls += [web.url(n, denied if i % 2 else web.config.hosts[0]) for i, n in enumerate(names[8:])]
        values = {**_spec_values(web, tmp_path), "url_list": str(tmp_path / "two_hosts.csv")}
        with (tmp_path / "two_hosts.csv").open("w") as handle:
            handle.write("url,caption,source_id\n")
            handle.writelines(f"{url},photo number {i},{i}\n" for i, url in enumerate(urls))
        values["number_sample_per_shard"] = 4
        dataset = tmp_path / "dataset"
        with dg.instance_for_test() as instance:
            assert build_dataset(build_defs(spec_from_mapping(values)), instance).checks_passed
            assert web.stats.host(denied).requests > 0
            before = {i: (dataset / f"0000{i}.tar").stat().st_mtime_ns for i in range(4)}

            web.reset_stats()
            defs = build_defs(spec_from_mapping({**values, "denied_domains": [denied]}))
            _job(defs).execute_in_process(instance=instance, asset_selection=INGEST)
            # The shrunk plan's partition is gone, and so are its files (they held denied rows).
            assert instance.get_dynamic_partitions(shards_partitions.name) == ["00000", "00001", "00002"]
            assert not list(dataset.glob("00003*"))
            # The re-planned partition still shows materialized, so its input check says why not.
            assert _input_check(instance) == {"00000": True, "00001": True, "00002": False}
            # A backfill over every partition re-downloads exactly the re-planned shard.
            result = _job(defs).execute_in_process(
                instance=instance, asset_selection=DOWNLOAD, tags=range_tags("00000", "00002")
            )
            images = sorted(p for p in web.stats.paths if p.startswith("/img/"))
            assert images == sorted(f"/img/{n}" for n in names[8::2])
            assert web.stats.host(denied).requests == 0
            logs = _logs(instance, result.run_id)
            assert any("shard 00002 was built from another input (re-planned)" in m for m in logs)
            assert not any("shard 00001 was built" in m for m in logs)
            assert [(dataset / f"0000{i}.tar").stat().st_mtime_ns == before[i] for i in range(3)] == [
                True,
                True,
                False,
            ]
            stored = sorted(r["url"] for r in pq.read_table(dataset / "00002.parquet").to_pylist())
            assert stored == [web.url(n) for n in names[8::2]]
            assert _input_check(instance)["00002"] is True  # downloaded again: current
            for tar_path in dataset.glob("*.tar"):
                with tarfile.open(tar_path) as tar:
                    metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
                assert metas and not [m for m in metas if denied in m["url"]], tar_path

            published = _job(defs).execute_in_process(
                instance=instance, asset_selection=PUBLISH, raise_on_error=False
            )
            failed = {e.check_name for e in published.get_asset_check_evaluations() if not e.passed}
            assert failed == set(), failed
            report = json.loads((dataset / "_reports" / "verification.json").read_text())
            assert report["rows"] == 12 and report["shards_complete"] == 3


def test_stale_shard_files_and_replanned_stats_are_reported(server: ImageServer, tmp_path: Path) -> None:
    """Verification after a re-plan that nobody downloaded yet: failed checks naming shards."""
    spec = spec_from_mapping(_spec_values(server, tmp_path))
    defs = build_defs(spec)
    dataset = tmp_path / "dataset"
    with dg.instance_for_test() as instance:
        assert build_dataset(defs, instance).checks_passed
        # Another plan's shard left in the folder, and shard 00001 built from other rows.
        for name in ("00003.tar", "00003.parquet", "00003_stats.json"):
            (dataset / name.replace("00003", "00007")).write_bytes((dataset / name).read_bytes())
        stats = json.loads((dataset / "00001_stats.json").read_text())
        (dataset / "00001_stats.json").write_text(json.dumps({**stats, "input_fingerprint": "f" * 32}))
        result = _job(defs).execute_in_process(
            instance=instance, asset_selection=PUBLISH, raise_on_error=False
        )
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["shards_in_plan"].passed
    assert "shard 00007" in str(evaluations["shards_in_plan"].metadata["problems"].value)
    assert not evaluations["shards_complete"].passed
    assert "shard 00001 was built from another input" in str(
        evaluations["shards_complete"].metadata["problems"].value
    )
    assert result.asset_materializations_for_node("dataset_card") == []


def test_run_config_overrides_one_key_and_is_validated(server: ImageServer, tmp_path: Path) -> None:
    spec = spec_from_mapping(_spec_values(server, tmp_path))
    with dg.instance_for_test() as instance:
        job = _job(build_defs(spec))
        job.execute_in_process(instance=instance, asset_selection=INGEST)
        override = {"resources": {"dataset": {"config": {"min_image_size": 100_000}}}}
        refused = job.execute_in_process(
            instance=instance,
            asset_selection=DOWNLOAD,
            partition_key="00000",
            run_config=override,
            raise_on_error=False,
        )
        # 0 images stored: the shard fails its success-rate gate (its files stay, for reading).
        assert not refused.success
        rows = pq.read_table(tmp_path / "dataset" / "00000.parquet").to_pylist()
        # the override reached the engine: nothing is big enough; every other key came from the file
        assert rows and not [r for r in rows if r["status"] == "success"]
        assert "image too small" in {r["error_message"] for r in rows}

        bad = {"resources": {"dataset": {"config": {"downscale_interpolation": "wide"}}}}
        result = job.execute_in_process(
            instance=instance,
            asset_selection=DOWNLOAD,
            partition_key="00001",
            run_config=bad,
            raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "downscale_interpolation='wide' is not one of" in str(failure.step_failure_data.error)


def test_layout_keys_cannot_be_overridden_per_run(server: ImageServer, tmp_path: Path) -> None:
    """A run that changed the shard layout would mix two layouts in one dataset."""
    spec = spec_from_mapping(_spec_values(server, tmp_path))
    defs = build_defs(spec)
    with dg.instance_for_test() as instance:
        for key, value in (("image_size", 32), ("output_format", "parquet"), ("number_sample_per_shard", 3)):
            config = {"resources": {"dataset": {"config": {key: value}}}}
            with pytest.raises(dg.DagsterInvalidConfigError, match=key):
                _job(defs).execute_in_process(instance=instance, asset_selection=INGEST, run_config=config)
    resource = defs.resources["dataset"]
    assert resource.spec().image_size == 64  # read from the spec, not from a resource field
    assert "image_size" not in type(resource).model_fields


def test_every_engine_option_is_a_spec_key() -> None:
    from dataset_assets.engine import DownloadOptions
    from dataset_assets.spec import DatasetSpec

    # one vocabulary: the spec's keys are the engine's names, incremental_mode included
    assert set(DownloadOptions.field_names()) <= set(DatasetSpec.model_fields)


def test_shard_whose_host_was_down_fails_and_is_redone_as_failed(server: ImageServer, tmp_path: Path) -> None:
    """0 % success (the host was down) is a failed partition, not a green one; once the host is
    back, a run of the failed and missing partitions completes it."""
    from dataset_assets.engine.runner import already_done
    from dataset_assets.io.storage import OutputFolder
    from dataset_assets_tests.scale_fixtures import free_port

    names = sorted(corpus_images(IMAGES, seed=7))[:8]
    down_port = free_port()  # nothing listens here until the "outage" ends
    live = [server.url(n) for n in names[:4]]
    down = [f"http://127.0.0.1:{down_port}/img/{n}" for n in names[4:]]
    with (tmp_path / "two_hosts.csv").open("w") as handle:
        handle.write("url,caption\n" + "".join(f"{u},image number {i}\n" for i, u in enumerate(live + down)))
    values = {
        **_spec_values(server, tmp_path),
        "url_list": str(tmp_path / "two_hosts.csv"),
        "number_sample_per_shard": 4,
    }
    values.pop("save_additional_columns")
    spec = spec_from_mapping(values)
    defs = build_defs(spec)
    with dg.instance_for_test() as instance:
        _job(defs).execute_in_process(instance=instance, asset_selection=INGEST)
        keys = instance.get_dynamic_partitions(shards_partitions.name)
        assert keys == ["00000", "00001"]
        result = _job(defs).execute_in_process(
            instance=instance,
            asset_selection=DOWNLOAD,
            tags=range_tags("00000", "00001"),
            raise_on_error=False,
        )
        assert not result.success
        evaluations = {(e.partition, e.check_name): e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations[("00000", "shard_success_rate")] is True
        assert evaluations[("00001", "shard_success_rate")] is False
        assert evaluations[("00001", "shard_rows_match_input")] is True  # only the rate failed
        statuses = instance.get_status_by_partition(dg.AssetKey("image_shards"), keys, shards_partitions)
        assert statuses == {
            "00000": dg.AssetPartitionStatus.MATERIALIZED,
            "00001": dg.AssetPartitionStatus.FAILED,
        }
        assert missing_shard_keys(instance) == ["00001"]
        # The files stay, but the shard is not complete for resume.
        stats = json.loads((tmp_path / "dataset" / "00001_stats.json").read_text())
        assert stats["passed_gates"] is False and stats["successes"] == 0
        output = OutputFolder(str(tmp_path / "dataset"))
        assert not already_done(output, 1, spec.download_options())
        assert already_done(output, 0, spec.download_options())

        # The outage ends: the same host and port serve the images again.
        config = ServerConfig(port=down_port, max_lifetime_s=120)
        with ImageServer(images=corpus_images(IMAGES, seed=7), config=config) as restored:
            outcome = build_dataset(defs, instance)
            assert restored.stats.total_requests >= 4
        assert outcome.checks_passed, outcome.failed_checks
        assert outcome.images == 8
        statuses = instance.get_status_by_partition(dg.AssetKey("image_shards"), keys, shards_partitions)
        assert set(statuses.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
    assert json.loads((tmp_path / "dataset" / "00001_stats.json").read_text())["passed_gates"] is True


def _requested_while_00000_runs(defs: dg.Definitions) -> set[str]:
    """Partitions the automation condition requests when 00000 and 00001 are new, 00000 running."""
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        instance.add_dynamic_partitions(shards_partitions.name, ["00000", "00001"])
        for key in ("filtered_urls", "url_shards"):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        run = instance.create_run_for_job(
            job_def=_job(defs), asset_selection=frozenset(DOWNLOAD), tags={"dagster/partition": "00000"}
        )
        statuses = instance.get_status_by_partition(dg.AssetKey("image_shards"), ["00000"], shards_partitions)
        assert run.status == dg.DagsterRunStatus.NOT_STARTED
        assert statuses["00000"] == dg.AssetPartitionStatus.IN_PROGRESS
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        return set(result.get_requested_partitions(dg.AssetKey("image_shards")))


def test_automation_never_starts_a_partition_in_progress(tmp_path: Path) -> None:
    spec = spec_from_mapping({"url_list": str(tmp_path / "urls.csv"), "output_folder": str(tmp_path / "out")})
    defs = build_defs(spec)
    assert _requested_while_00000_runs(defs) == {"00001"}

    # The control: on_missing() alone would start 00000 a second time.
    def unguarded(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key != dg.AssetKey("image_shards"):
            return spec
        return spec.replace_attributes(automation_condition=dg.AutomationCondition.on_missing())

    bare = dg.Definitions(
        assets=dg.map_asset_specs(unguarded, list(defs.assets or [])),
        asset_checks=defs.asset_checks,
        resources=defs.resources,
    )
    assert _requested_while_00000_runs(bare) == {"00000", "00001"}
