"""Dataset verification: is every shard complete, consistent, decodable and intact?

It reads what a consumer reads (stats json, parquet, tar members), so it catches what a
consumer would trip over: a missing shard, a parquet that lost rows, a tar member that does
not decode or whose size disagrees with its metadata, duplicate keys, a file changed since it
was written.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS
from dataset_assets.engine.storage import OutputFolder, StorageOptions
from dataset_assets.engine.writers import stats_name

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
        for final, expected in stats.get("checksums", {}).items():
            if not output.exists(final):
                checks["checksums_match"].add(f"{final} is missing")
            elif output.sha256(output.path(final)) != expected:
                checks["checksums_match"].add(f"{final} changed since it was written (sha256 differs)")
        if options.output_format == "dummy":
            continue
        table = pq.read_table(
            output.path(f"{shard}.parquet"),
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
    with output.fs.open(posixpath.join(output.root, f"{shard}.parquet"), "rb") as handle:
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
    for key, data, meta in _iter_samples(output, shard, options):
        found.add(key)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            outcome.add(f"shard {shard}: {key} does not decode")
            continue
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
            outcome.add(f"shard {shard}: {key}.json size disagrees with the image")
    for key in sorted(set(sizes) - found)[:MAX_LISTED]:
        outcome.add(f"shard {shard}: success {key} has no stored image")


def _iter_samples(
    output: OutputFolder, shard: str, options: DownloadOptions
) -> Iterator[tuple[str, bytes, dict[str, Any] | None]]:
    ext = options.encode_format
    if options.output_format == "webdataset":
        pending_json: dict[str, dict[str, Any]] = {}
        images: dict[str, bytes] = {}
        try:
            with (
                output.fs.open(output.path(f"{shard}.tar"), "rb") as handle,
                tarfile.open(fileobj=handle, mode="r|") as tar,
            ):
                for member in tar:
                    key, _, suffix = member.name.partition(".")
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    payload = extracted.read()
                    if suffix == "json":
                        pending_json[key] = json.loads(payload)
                    elif suffix == ext:
                        images[key] = payload
                    if key in images and key in pending_json:
                        yield key, images.pop(key), pending_json.pop(key)
        except (tarfile.TarError, OSError, EOFError) as error:
            yield f"{shard}.tar", b"", {"error": str(error)}
        for key, payload in images.items():
            yield key, payload, None
    elif options.output_format == "files":
        folder = output.path(shard)
        for path in sorted(output.fs.glob(f"{folder}/*.{ext}")):
            key = posixpath.basename(path)[: -len(ext) - 1]
            meta_path = f"{folder}/{key}.json"
            meta = json.loads(output.fs.cat_file(meta_path)) if output.fs.exists(meta_path) else None
            yield key, output.fs.cat_file(path), meta
    elif options.output_format == "parquet":
        table = pq.read_table(
            output.path(f"{shard}.parquet"), columns=["key", "status", ext], filesystem=output.fs
        )
        for key, status, payload in zip(
            *(table.column(c).to_pylist() for c in ("key", "status", ext)), strict=True
        ):
            if status == SUCCESS and payload is not None:
                yield key, payload, None
