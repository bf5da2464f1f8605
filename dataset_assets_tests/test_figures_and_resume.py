"""Figures that mean what they say, checks that are never stale, a no-op resume that writes nothing.

Real Dagster instances, real shard files, a real image server on 127.0.0.1. That a shard whose
host was down (0 % success) ends as a FAILED partition, not a green one, is
``test_definitions.py::test_shard_whose_host_was_down_fails_and_is_redone_as_failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dataset_assets.assets.figures import human_bytes
from dataset_assets.assets.shards import shard_metadata
from dataset_assets.definitions import build_defs
from dataset_assets.demo.build import DOWNLOAD, INGEST, PUBLISH, build_dataset
from dataset_assets.engine.stats import ShardStats
from dataset_assets.partitions import range_tags, shards_partitions
from dataset_assets.spec import spec_from_mapping
from dataset_assets_tests.fakeweb.images import corpus_images
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig
from dataset_assets_tests.scale_fixtures import free_port
from dataset_assets_tests.test_definitions import IMAGES, _spec_values

SHARDS = dg.AssetKey("image_shards")
# What the UI charts (int and float entries); everything else is shown as a value.
CHARTED = {
    "success_rate",
    "images_per_sec",
    "successes",
    "failed_to_download",
    "failed_to_resize",
    "opted_out",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(
        images=corpus_images(IMAGES, seed=7), config=ServerConfig(max_lifetime_s=600)
    ) as running:
        yield running


def _job(defs: dg.Definitions) -> dg.JobDefinition:
    return defs.resolve_implicit_global_asset_job_def()


def _materializations(instance: dg.DagsterInstance, key: str | None = None) -> list[dg.EventLogRecord]:
    records_filter = dg.AssetRecordsFilter(asset_key=SHARDS, asset_partitions=[key] if key else None)
    return list(instance.fetch_materializations(records_filter, limit=1000).records)


def _image_requests(server: ImageServer) -> int:
    return sum(1 for path in server.stats.paths if path.startswith("/img/"))


def test_images_per_sec_counts_stored_images_and_old_stats_still_read() -> None:
    # An outage shard: 597 rows failed in a second, nothing stored.
    outage = ShardStats(shard_id=3, count=597, failed_to_download=597, duration=1.0)
    assert outage.images_per_sec == 0.0 and outage.rows_per_sec == 597.0
    # A stats file of the previous version recorded rows per second as images_per_sec.
    old = {"count": 100, "successes": 40, "failed_to_download": 60, "duration": 2.0, "images_per_sec": 50.0}
    stats = ShardStats.from_json(old, 3)
    assert stats.images_per_sec == 20.0
    assert stats.to_json()["images_per_sec"] == 20.0 and stats.to_json()["rows_per_sec"] == 50.0


def test_shard_metadata_charts_only_the_key_figures_rounded_and_typed() -> None:
    stats = ShardStats(
        shard_id=0,
        count=3,
        successes=2,
        failed_to_download=1,
        duration=2.345678,
        end_time=1_700_000_000.5,
        status_dict={"success": 2, "HTTP 404": 1},
        bytes_written=1_234_567,
        bytes_downloaded=999,
        files=["/data/ds/00000.tar", "/data/ds/00000.parquet", "/data/ds/00000_stats.json"],
        file_sizes={"00000.tar": 1_200_000, "00000.parquet": 34_567},
        input_fingerprint="ab" * 16,
    )
    metadata = shard_metadata(stats)
    numbers = (int, float, dg.IntMetadataValue, dg.FloatMetadataValue)
    charted = {k for k, v in metadata.items() if isinstance(v, numbers) and not isinstance(v, bool)}
    assert charted == CHARTED
    assert "dagster/row_count" not in metadata
    assert metadata["success_rate"].value == 0.6667 and metadata["images_per_sec"].value == 0.9
    assert metadata["duration"].value == "2.3 s" and metadata["count"].value == "3 rows"
    assert metadata["bytes_written"].value == "1.23 MB (1,234,567 bytes)"
    assert metadata["bytes_downloaded"].value == "999 bytes"
    assert metadata["stats_file"] == dg.MetadataValue.path("/data/ds/00000_stats.json")
    assert metadata["input_fingerprint"].value == "ab" * 16
    assert metadata["written_at"] == dg.MetadataValue.timestamp(1_700_000_000.5)
    files = [(r.data["file"], r.data["bytes"]) for r in metadata["files"].records]
    assert files == [
        ("/data/ds/00000.tar", 1_200_000),
        ("/data/ds/00000.parquet", 34_567),
        ("/data/ds/00000_stats.json", 0),
    ]
    failures = [(r.data["reason"], r.data["count"], r.data["share"]) for r in metadata["failures"].records]
    assert failures == [("HTTP 404", 1, "33.33%")]
    # The UI sorts its charts by key: the charted keys are the figures a user looks at first.
    assert sorted(charted)[0] == "failed_to_download"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 999_999, 12_345_678_901)] == [
        "0 bytes",
        "999 bytes",
        "1 kB (1,000 bytes)",
        "1 MB (999,999 bytes)",
        "12.3 GB (12,345,678,901 bytes)",
    ]


def test_dataset_totals_no_op_resume_and_checks_of_the_current_state(
    server: ImageServer, tmp_path: Path
) -> None:
    values = _spec_values(server, tmp_path)
    defs = build_defs(spec_from_mapping(values))
    dataset = tmp_path / "dataset"
    with dg.instance_for_test() as instance:
        outcome = build_dataset(defs, instance)
        assert outcome.checks_passed, outcome.failed_checks

        # The roll-up carries the dataset's totals, typed and rounded.
        verified = instance.fetch_materializations(dg.AssetKey("dataset_verification"), limit=1)
        totals = verified.records[0].asset_materialization.metadata
        report = json.loads((dataset / "_reports" / "verification.json").read_text())
        assert totals["dagster/row_count"].value == totals["successes"].value == 24
        assert (
            totals["rows"].value == 28
            and totals["shards_complete"].value == totals["shards_expected"].value == 4
        )
        assert totals["dagster/size_bytes"].value == report["bytes_written"] > 0
        assert totals["bytes_written"].value == human_bytes(report["bytes_written"])
        assert totals["bytes_downloaded"].value == human_bytes(report["bytes_downloaded"])
        assert report["bytes_downloaded"] > 0 and report["run_id"] == verified.records[0].run_id
        assert totals["success_rate"].value == round(24 / 28, 4)
        reasons = {r.data["reason"]: r.data["count"] for r in totals["failures"].records}
        assert sum(reasons.values()) == 4 == sum(report["failure_reasons"].values())
        assert totals["checks_failed"].value == "none"
        assert totals["report"] == dg.MetadataValue.path(str(dataset / "_reports" / "verification.json"))

        # A no-op resume: the same two partitions again, nothing downloaded, no new event.
        before, requests = len(_materializations(instance)), _image_requests(server)
        assert before == 4
        result = _job(defs).execute_in_process(
            instance=instance, asset_selection=DOWNLOAD, tags=range_tags("00000", "00001")
        )
        assert result.success
        single = _job(defs).execute_in_process(
            instance=instance, asset_selection=DOWNLOAD, partition_key="00002"
        )
        assert single.success
        assert len(_materializations(instance)) == before
        assert _image_requests(server) == requests
        keys = instance.get_dynamic_partitions(shards_partitions.name)
        statuses = instance.get_status_by_partition(SHARDS, keys, shards_partitions)
        assert set(statuses.values()) == {dg.AssetPartitionStatus.MATERIALIZED}

        # A run that died (marked failed, as run monitoring does) leaves 00003 failed; only a
        # new materialization clears that, so the next run reports the complete shard again.
        dead = instance.create_run_for_job(
            job_def=_job(defs), asset_selection=frozenset(DOWNLOAD), tags={"dagster/partition": "00003"}
        )
        instance.report_run_failed(dead)
        assert instance.get_status_by_partition(SHARDS, ["00003"], shards_partitions) == {
            "00003": dg.AssetPartitionStatus.FAILED
        }
        _job(defs).execute_in_process(instance=instance, asset_selection=DOWNLOAD, partition_key="00003")
        assert len(_materializations(instance, "00003")) == 2
        assert instance.get_status_by_partition(SHARDS, ["00003"], shards_partitions) == {
            "00003": dg.AssetPartitionStatus.MATERIALIZED
        }
        assert _image_requests(server) == requests

        # The checks alone, after a stats file was deleted: they judge the folder as it is now.
        (dataset / "00001_stats.json").unlink()
        check_keys = {check_key for checks in defs.asset_checks or [] for check_key in checks.check_keys}
        alone = _job(defs).get_subset(asset_selection=set(), asset_check_selection=check_keys)
        result = alone.execute_in_process(instance=instance, raise_on_error=False)
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert len(evaluations) == 7 and result.asset_materializations_for_node("dataset_verification") == []
        assert not evaluations["shards_complete"].passed
        assert "3/4 shards complete" in (evaluations["shards_complete"].description or "")
        assert "shard 00001 has no 00001_stats.json" in str(
            evaluations["shards_complete"].metadata["problems"].value
        )
        assert evaluations["keys_unique"].passed


def test_fresh_instance_over_complete_shards_materializes_them(server: ImageServer, tmp_path: Path) -> None:
    defs = build_defs(spec_from_mapping(_spec_values(server, tmp_path)))
    with dg.instance_for_test() as first:
        _job(defs).execute_in_process(instance=first, asset_selection=INGEST)
        _job(defs).execute_in_process(
            instance=first, asset_selection=DOWNLOAD, tags=range_tags("00000", "00001")
        )
        assert len(_materializations(first)) == 2
    requests = _image_requests(server)
    with dg.instance_for_test() as fresh:
        _job(defs).execute_in_process(instance=fresh, asset_selection=INGEST)
        result = _job(defs).execute_in_process(
            instance=fresh, asset_selection=DOWNLOAD, tags=range_tags("00000", "00001")
        )
        assert result.success
        records = _materializations(fresh)
        assert sorted(r.partition_key for r in records) == ["00000", "00001"]
        assert all(r.asset_materialization.metadata["already_complete"].value for r in records)
        assert _image_requests(server) == requests  # complete on disk: reported, not downloaded
        # ... and from then on, the same run is a no-op.
        _job(defs).execute_in_process(
            instance=fresh, asset_selection=DOWNLOAD, tags=range_tags("00000", "00001")
        )
        assert len(_materializations(fresh)) == 2


def test_unchanged_shard_in_a_failing_run_stays_materialized(server: ImageServer, tmp_path: Path) -> None:
    """A failed run marks failed every partition it planned and did not report: an unchanged
    shard in it is reported again, so only the shard that failed ends as failed."""
    names = sorted(corpus_images(IMAGES, seed=7))[:8]
    down_port = free_port()  # nothing listens here until the outage ends
    urls = [server.url(n) for n in names[:4]] + [f"http://127.0.0.1:{down_port}/img/{n}" for n in names[4:]]
    (tmp_path / "two_hosts.csv").write_text(
        "url,caption\n" + "".join(f"{u},image number {i}\n" for i, u in enumerate(urls))
    )
    values = {**_spec_values(server, tmp_path), "url_list": str(tmp_path / "two_hosts.csv")}
    values.update(number_sample_per_shard=4)
    values.pop("save_additional_columns")
    defs = build_defs(spec_from_mapping(values))
    keys = ["00000", "00001"]
    with dg.instance_for_test() as instance:
        _job(defs).execute_in_process(instance=instance, asset_selection=INGEST)
        _job(defs).execute_in_process(instance=instance, asset_selection=DOWNLOAD, partition_key="00000")
        failing = _job(defs).execute_in_process(
            instance=instance, asset_selection=DOWNLOAD, tags=range_tags(*keys), raise_on_error=False
        )
        assert not failing.success
        assert instance.get_status_by_partition(SHARDS, keys, shards_partitions) == {
            "00000": dg.AssetPartitionStatus.MATERIALIZED,
            "00001": dg.AssetPartitionStatus.FAILED,
        }
        assert len(_materializations(instance, "00000")) == 2

        # The outage ends: 00001 is downloaded and materialized, 00000 gets nothing new.
        with ImageServer(
            images=corpus_images(IMAGES, seed=7), config=ServerConfig(port=down_port, max_lifetime_s=120)
        ):
            result = _job(defs).execute_in_process(
                instance=instance, asset_selection=DOWNLOAD, tags=range_tags(*keys)
            )
        assert result.success
        assert len(_materializations(instance, "00000")) == 2
        assert len(_materializations(instance, "00001")) == 1
        statuses = instance.get_status_by_partition(SHARDS, keys, shards_partitions)
        assert set(statuses.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
        published = _job(defs).execute_in_process(
            instance=instance, asset_selection=PUBLISH, raise_on_error=False
        )
        assert published.success
