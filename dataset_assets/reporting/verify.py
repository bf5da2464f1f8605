"""Dataset verification: is every shard complete, consistent, decodable and intact?

It reads what a consumer reads (stats json, parquet, tar members), so it catches what a
consumer would trip over: a missing shard, a parquet that lost rows, a tar member that does
not decode or whose size disagrees with its metadata, duplicate keys, a file changed since it
was written.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS
from dataset_assets.engine.shards.formats import ReadSample, ShardReadError
from dataset_assets.engine.shards.layout import parquet_name, stats_name
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.io.storage import OutputFolder, StorageOptions

MAX_LISTED = 20  # problems listed per check; the count is always exact


@dataclass
class CheckOutcome:
    passed: bool
    summary: str
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def add(self, problem: str) -> None:
        self.problem_count += 1
        self.passed = False
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)


@dataclass
class VerificationReport:
    shards_expected: int = 0
    shards_complete: int = 0
    rows: int = 0
    successes: int = 0
    samples_decoded: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    # Rows refused by each opt-out signal, summed over the shards' stats (the consent ledger).
    opt_outs: dict[str, int] = field(default_factory=dict)
    checks: dict[str, CheckOutcome] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.successes / self.rows if self.rows else 0.0

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["success_rate"] = self.success_rate
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> VerificationReport:
        checks = {name: CheckOutcome(**value) for name, value in payload.get("checks", {}).items()}
        fields = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__ and k != "checks"}
        return cls(**fields, checks=checks)


CHECK_NAMES = ("shards_complete", "rows_match_inputs", "samples_decode", "keys_unique", "checksums_match")


def verify_dataset(
    output_folder: str,
    shard_keys: list[str],
    options: DownloadOptions,
    shard_inputs_folder: str | None = None,
    success_rate_floor: float = 0.0,
    storage_options: StorageOptions | None = None,
) -> VerificationReport:
    """Verify the shards named by ``shard_keys``; every check's outcome lands in the report.

    Either folder may be remote (``s3://...``); ``storage_options`` configure its filesystem.
    """
    output = OutputFolder(output_folder, storage_options)
    report = VerificationReport(shards_expected=len(shard_keys))
    checks = {name: CheckOutcome(True, "") for name in CHECK_NAMES}
    seen_keys: set[str] = set()
    status_counts: dict[str, int] = {}

    for shard in shard_keys:
        if not output.exists(stats_name(shard)):
            checks["shards_complete"].add(f"shard {shard} has no {stats_name(shard)}")
            continue
        report.shards_complete += 1
        stats = output.read_json(stats_name(shard))
        for signal, refused in stats.get("opt_outs", {}).items():
            report.opt_outs[signal] = report.opt_outs.get(signal, 0) + int(refused)
        for final, expected in stats.get("checksums", {}).items():
            if not output.exists(final):
                checks["checksums_match"].add(f"{final} is missing")
            elif output.sha256(output.path(final)) != expected:
                checks["checksums_match"].add(f"{final} changed since it was written (sha256 differs)")
        if not shard_format(options.output_format).writes_parquet:
            continue
        table = pq.read_table(
            output.path(parquet_name(shard)),
            columns=["key", "status", "width", "height"],
            filesystem=output.fs,
        )
        report.rows += table.num_rows
        expected_rows = (
            _input_rows(shard_inputs_folder, shard, storage_options)
            if shard_inputs_folder
            else stats["count"]
        )
        if table.num_rows != expected_rows or stats["count"] != expected_rows:
            checks["rows_match_inputs"].add(
                f"shard {shard}: {table.num_rows} parquet rows, {stats['count']} counted, "
                f"{expected_rows} input rows"
            )
        keys = table.column("key").to_pylist()
        statuses = table.column("status").to_pylist()
        for status in statuses:
            status_counts[status] = status_counts.get(status, 0) + 1
        duplicates = seen_keys.intersection(keys)
        if len(set(keys)) != len(keys) or duplicates:
            checks["keys_unique"].add(
                f"shard {shard}: duplicate keys, e.g. {sorted(duplicates)[:3] or keys[:1]}"
            )
        seen_keys.update(keys)
        sizes = {
            k: (w, h)
            for k, s, w, h in zip(
                keys,
                statuses,
                table.column("width").to_pylist(),
                table.column("height").to_pylist(),
                strict=True,
            )
            if s == SUCCESS
        }
        report.successes += len(sizes)
        _verify_samples(output, shard, options, sizes, checks["samples_decode"], report)

    report.status_counts = status_counts
    checks["shards_complete"].summary = f"{report.shards_complete}/{len(shard_keys)} shards complete"
    checks["rows_match_inputs"].summary = f"{report.rows} metadata rows checked against shard inputs"
    checks["samples_decode"].summary = f"{report.samples_decoded} samples decoded and size-checked"
    checks["keys_unique"].summary = (
        f"{len(seen_keys)} keys, all distinct" if checks["keys_unique"].passed else ("duplicate keys found")
    )
    checks["checksums_match"].summary = "shard files match the checksums recorded when written"
    rate = CheckOutcome(report.success_rate >= success_rate_floor, "")
    rate.summary = f"success rate {report.success_rate:.1%} (floor {success_rate_floor:.1%})"
    checks["success_rate"] = rate
    report.checks = checks
    return report


def _input_rows(shard_inputs_folder: str, shard: str, storage_options: StorageOptions | None = None) -> int:
    output = OutputFolder(shard_inputs_folder, storage_options)
    with output.fs.open(posixpath.join(output.root, parquet_name(shard)), "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _verify_samples(
    output: OutputFolder,
    shard: str,
    options: DownloadOptions,
    sizes: dict[str, tuple[int, int]],
    outcome: CheckOutcome,
    report: VerificationReport,
) -> None:
    """Decode every stored image and compare its size with the recorded width/height."""
    found: set[str] = set()
    try:
        for sample in shard_format(options.output_format).read_samples(output, shard, options.encode_format):
            found.add(sample.key)
            _verify_sample(shard, sample, sizes, outcome, report)
    except ShardReadError as error:
        outcome.add(f"shard {shard}: {error}")
    for key in sorted(set(sizes) - found)[:MAX_LISTED]:
        outcome.add(f"shard {shard}: success {key} has no stored image")


def _verify_sample(
    shard: str,
    sample: ReadSample,
    sizes: dict[str, tuple[int, int]],
    outcome: CheckOutcome,
    report: VerificationReport,
) -> None:
    key, meta = sample.key, sample.meta
    try:
        image = cv2.imdecode(np.frombuffer(sample.image, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        outcome.add(f"shard {shard}: {key} does not decode")
        return
    report.samples_decoded += 1
    expected = sizes.get(key)
    actual = (image.shape[1], image.shape[0])
    if expected is None:
        outcome.add(f"shard {shard}: {key} is stored but not a success in the parquet")
    elif actual != expected:
        outcome.add(
            f"shard {shard}: {key} is {actual[0]}x{actual[1]}, metadata says {expected[0]}x{expected[1]}"
        )
    if meta is not None and (meta.get("width"), meta.get("height")) != actual:
        outcome.add(f"shard {shard}: {key}'s metadata size disagrees with the image")
