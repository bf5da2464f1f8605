"""Dataset verification as a roll-up of the shards' stats, plus a deep sample.

Why not re-read the dataset: at LAION scale a pass over every tar, image and key is days of
CPU and a key set of tens of GB, in one process. What the writer records per shard (counts,
status, key range, file sizes, checksums, the fingerprint of its input) answers most questions
in one small read per shard; the rest is sampled, at a cost that does not grow with the images:

- every shard: its stats parse; it was built from the plan's current input (fingerprint) and
  has one row per input row (the planner's manifest, one read for all shards); its keys lie
  in its own range (so keys are unique across the dataset without a global key set); every
  file it committed is there with the size it had when written (one listing of the folder:
  a truncated or replaced tar is caught here, whichever shard it is);
- a deep sample of ``DEEP_SAMPLE`` images, spread deterministically over the shards: decoded,
  their size compared with the size their metadata records, the sampled shards' parquets read
  (row count, keys distinct and in range);
- sha256 of the files of ``CHECKSUM_SHARDS`` of the sampled shards (``full_checksums``: of
  every shard, streamed, O(dataset bytes) of I/O but constant memory; for an audit).

Nothing here raises on bad data: an unreadable stats file, a truncated tar or parquet, a shard
left over by a larger plan is a failed check whose problem names the shard.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.engine.fingerprint import footer_fingerprint
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE, SUCCESS
from dataset_assets.engine.shards.formats import ReadSample, ShardReadError
from dataset_assets.engine.shards.layout import STATS_SUFFIX, compute_key, parquet_name, stats_name
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.engine.stats import ShardStats
from dataset_assets.io.storage import OutputFolder, StorageOptions, filesystem
from dataset_assets.planning.sharding import read_manifest

MAX_LISTED = 20  # problems listed per check; the count is always exact
MAX_REASONS = 100  # failure reasons kept in the report, the most frequent; the rest are one
OTHER_REASONS = "other reasons"
DEEP_SAMPLE = 64  # images decoded per verification, whatever the dataset's size
CHECKSUM_SHARDS = 4  # sampled shards whose files are hashed (full_checksums: every shard)
_STATS_FILE = re.compile(rf"^(\d+){re.escape(STATS_SUFFIX)}$")


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
    shards_sampled: int = 0  # shards whose images and parquet the deep sample read
    shards_hashed: int = 0  # shards whose files were hashed (sha256)
    bytes_hashed: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    # Rows refused by each opt-out signal, summed over the shards' stats (the consent ledger).
    opt_outs: dict[str, int] = field(default_factory=dict)
    # The original images' shorter side, summed over the shards' stats (the card's histogram).
    short_sides: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    bytes_downloaded: int = 0
    # Failed rows by reason (each shard's error messages, summed): what went wrong, and how often.
    failure_reasons: dict[str, int] = field(default_factory=dict)
    # The Dagster run that wrote this report, if one did: its checks use it only in that run,
    # and verify the current state afresh in any other (a report is a snapshot, not the truth).
    run_id: str | None = None
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


CHECK_NAMES = (
    "shards_complete",
    "rows_match_inputs",
    "samples_decode",
    "keys_unique",
    "checksums_match",
    "shards_in_plan",
)


class _Plan:
    """The plan's rows and fingerprint per shard: the manifest (one read), else the footers."""

    def __init__(self, folder: str | None, storage_options: StorageOptions | None) -> None:
        self.known = folder is not None
        self._manifest: dict[str, tuple[int, str | None]] | None = None
        self._folder = folder
        self._storage_options = storage_options
        if folder is not None:
            manifest = read_manifest(folder, storage_options)
            if manifest is not None:
                self._manifest = {
                    e["key"]: (int(e.get("rows", 0)), e.get("fingerprint"))
                    for e in manifest.get("shards", [])
                    if isinstance(e, dict) and "key" in e
                }

    def entry(self, shard: str) -> tuple[int, str | None] | None:
        """(rows, fingerprint) of the shard's input; None when the plan has no such shard."""
        if self._manifest is not None:
            return self._manifest.get(shard)
        if self._folder is None:
            return None
        fs, root = filesystem(self._folder, self._storage_options)
        return footer_fingerprint(fs, posixpath.join(root, parquet_name(shard)))

    def has(self, shard: str) -> bool:
        return self.entry(shard) is not None


def verify_dataset(
    output_folder: str | OutputFolder,
    shard_keys: list[str],
    options: DownloadOptions,
    shard_inputs_folder: str | None = None,
    success_rate_floor: float = 0.0,
    storage_options: StorageOptions | None = None,
    *,
    deep_sample: int = DEEP_SAMPLE,
    full_checksums: bool = False,
) -> VerificationReport:
    """Verify the shards named by ``shard_keys``; every check's outcome lands in the report.

    ``shard_inputs_folder`` is the plan (the planner's shard inputs): with it, rows are checked
    against each shard's input, re-planned shards and shards outside the plan are reported.
    Either folder may be remote (``s3://...``); ``storage_options`` configure its filesystem.
    """
    output = (
        output_folder
        if isinstance(output_folder, OutputFolder)
        else OutputFolder(output_folder, storage_options)
    )
    plan = _Plan(shard_inputs_folder, storage_options)
    report = VerificationReport(shards_expected=len(shard_keys))
    checks = {name: CheckOutcome(True, "") for name in CHECK_NAMES}
    listing = _listing(output)
    complete: list[tuple[str, ShardStats]] = []

    for shard in shard_keys:
        stats = _load_stats(output, shard, checks["shards_complete"])
        if stats is None:
            continue
        if not _matches_plan(shard, stats, plan, checks):
            continue
        report.shards_complete += 1
        _add_totals(report, stats)
        _check_keys(shard, stats, options, checks["keys_unique"])
        _check_files(output, shard, stats, listing, checks["checksums_match"])
        complete.append((shard, stats))

    if plan.known:
        registered = set(shard_keys)
        for name in sorted(listing):
            match = _STATS_FILE.match(name)
            if match and (match.group(1) not in registered or not plan.has(match.group(1))):
                checks["shards_in_plan"].add(
                    f"shard {match.group(1)} is in the output folder but not in the plan "
                    "(left by a larger plan): delete its files, or re-materialise url_shards"
                )

    sampled = _spread([(s, st) for s, st in complete if st.successes > 0], deep_sample)
    report.shards_sampled = len(sampled)
    for (shard, stats), wanted in sampled:
        _deep_sample(output, shard, stats, wanted, options, checks, report)
    if full_checksums:
        hashed = complete
    else:
        hashed = [item for item, _ in _spread([item for item, _ in sampled], CHECKSUM_SHARDS)]
    for shard, stats in hashed:
        _check_checksums(output, shard, stats, checks["checksums_match"], report)

    checks["shards_complete"].summary = f"{report.shards_complete}/{len(shard_keys)} shards complete"
    checks["rows_match_inputs"].summary = (
        f"{report.rows} rows in {report.shards_complete} shards' stats checked against "
        + ("the plan" if plan.known else "their own counts")
        + f"; {report.shards_sampled} sampled shards' parquets read"
    )
    checks["samples_decode"].summary = (
        f"{report.samples_decoded} sampled images decoded and size-checked "
        f"(deep sample of {deep_sample} over {report.shards_sampled} shards)"
    )
    checks["keys_unique"].summary = (
        "every shard's keys lie in its own range" if checks["keys_unique"].passed else "keys out of range"
    )
    checks["checksums_match"].summary = (
        f"every shard file has its recorded size; sha256 of {report.shards_hashed} shards "
        f"({report.bytes_hashed:,} bytes) match"
    )
    checks["shards_in_plan"].summary = (
        "every registered shard is in the plan" if plan.known else "no plan given: not checked"
    )
    rate = CheckOutcome(report.success_rate >= success_rate_floor, "")
    rate.summary = f"success rate {report.success_rate:.1%} (floor {success_rate_floor:.1%})"
    checks["success_rate"] = rate
    report.checks = checks
    report.failure_reasons = _most_frequent(report.failure_reasons, MAX_REASONS)
    return report


def _most_frequent(counts: dict[str, int], kept: int) -> dict[str, int]:
    """The ``kept`` largest counts, most frequent first; the rest summed under OTHER_REASONS."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    top = dict(ordered[:kept])
    rest = sum(n for _, n in ordered[kept:])
    if rest:
        top[OTHER_REASONS] = top.get(OTHER_REASONS, 0) + rest
    return top


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _listing(output: OutputFolder) -> dict[str, int] | None:
    """File name -> size for the files directly in the output folder; None if it cannot be listed.

    One listing (one request per 1000 names on an object store) instead of a request per file.
    """
    try:
        entries = output.fs.ls(output.root, detail=True)
    except (OSError, ValueError):
        return None
    return {
        posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
        for e in entries
        if e.get("type") == "file"
    }


def _load_stats(output: OutputFolder, shard: str, outcome: CheckOutcome) -> ShardStats | None:
    """The shard's stats, or None with the reason recorded (missing, unreadable, malformed)."""
    name = stats_name(shard)
    try:
        payload = output.read_json(name)
    except FileNotFoundError:
        outcome.add(f"shard {shard} has no {name}")
        return None
    except (OSError, ValueError) as error:
        outcome.add(f"shard {shard}: {name} is unreadable ({_first_line(error)})")
        return None
    try:
        if not isinstance(payload, dict):
            raise TypeError("not a JSON object")
        stats = ShardStats.from_json(payload, int(shard))
        counts = (stats.count, stats.successes, stats.failed_to_download, stats.failed_to_resize)
        if not all(isinstance(v, int) and v >= 0 for v in counts):
            raise TypeError("counts are not non-negative integers")
        if stats.successes + stats.failed_to_download + stats.failed_to_resize != stats.count:
            raise ValueError(f"{stats.count} rows but {stats.successes} successes and failures that disagree")
        mappings = (stats.status_dict, stats.opt_outs, stats.checksums, stats.file_sizes, stats.short_sides)
        for mapping in mappings:
            if not isinstance(mapping, dict):
                raise TypeError("a field that should be an object is not")
    except (TypeError, ValueError) as error:
        outcome.add(f"shard {shard}: {name} is malformed ({_first_line(error)})")
        return None
    return stats


def _matches_plan(shard: str, stats: ShardStats, plan: _Plan, checks: dict[str, CheckOutcome]) -> bool:
    """Whether the shard counts as complete against the plan (rows are checked either way)."""
    if not plan.known:
        return True
    entry = plan.entry(shard)
    if entry is None:
        checks["shards_in_plan"].add(f"shard {shard} is registered but not in the plan (no shard input)")
        return False
    rows, fingerprint = entry
    recorded = stats.input_fingerprint
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        checks["shards_complete"].add(
            f"shard {shard} was built from another input (re-planned); a backfill downloads it again"
        )
        return False
    if stats.count != rows:
        checks["rows_match_inputs"].add(f"shard {shard}: {stats.count} rows counted, {rows} input rows")
    return True


def _add_totals(report: VerificationReport, stats: ShardStats) -> None:
    report.rows += stats.count
    report.successes += stats.successes
    report.bytes_written += int(stats.bytes_written or 0)
    report.bytes_downloaded += int(stats.bytes_downloaded or 0)
    for reason, count in stats.status_dict.items():
        if reason != SUCCESS and isinstance(count, int) and count > 0:
            report.failure_reasons[reason] = report.failure_reasons.get(reason, 0) + count
    for status, count in (
        (SUCCESS, stats.successes),
        (FAILED_TO_DOWNLOAD, stats.failed_to_download),
        (FAILED_TO_RESIZE, stats.failed_to_resize),
    ):
        if count:
            report.status_counts[status] = report.status_counts.get(status, 0) + count
    for signal, refused in stats.opt_outs.items():
        report.opt_outs[signal] = report.opt_outs.get(signal, 0) + int(refused)
    for bucket, count in stats.short_sides.items():
        report.short_sides[bucket] = report.short_sides.get(bucket, 0) + int(count)


def _key_bounds(shard: str, options: DownloadOptions) -> tuple[str, str]:
    nsps, oom = options.number_sample_per_shard, options.oom_shard_count
    return compute_key(0, int(shard), nsps, oom), compute_key(nsps - 1, int(shard), nsps, oom)


def _check_keys(shard: str, stats: ShardStats, options: DownloadOptions, outcome: CheckOutcome) -> None:
    """Keys are positional: in range and at most one per row means unique across the dataset."""
    low, high = _key_bounds(shard, options)
    if stats.count > options.number_sample_per_shard:
        outcome.add(f"shard {shard}: {stats.count} rows, more than number_sample_per_shard")
    key_range = stats.key_range
    if key_range is None:
        return  # stats of an older version: the deep sample checks the keys it reads
    if (
        not isinstance(key_range, list)
        or len(key_range) != 2
        or not all(isinstance(k, str) and len(k) == len(low) for k in key_range)
        or not low <= key_range[0] <= key_range[1] <= high
    ):
        outcome.add(f"shard {shard}: keys {key_range} are outside its range {low}..{high}")


def _check_files(
    output: OutputFolder,
    shard: str,
    stats: ShardStats,
    listing: dict[str, int] | None,
    outcome: CheckOutcome,
) -> None:
    """Every file the shard committed is there, with the size it had when written."""
    names = dict.fromkeys(stats.checksums) | dict.fromkeys(stats.file_sizes)
    for name in names:
        if listing is not None:
            actual = listing.get(name)
        else:
            try:
                actual = int(output.fs.size(output.path(name)))
            except (OSError, ValueError):
                actual = None
        if actual is None:
            outcome.add(f"shard {shard}: {name} is missing")
            continue
        expected = stats.file_sizes.get(name)
        if expected is not None and actual != expected:
            outcome.add(
                f"shard {shard}: {name} is {actual:,} bytes, {expected:,} when written "
                "(truncated or replaced)"
            )


def _check_checksums(
    output: OutputFolder, shard: str, stats: ShardStats, outcome: CheckOutcome, report: VerificationReport
) -> None:
    report.shards_hashed += 1
    for name, expected in stats.checksums.items():
        path = output.path(name)
        try:
            actual = output.sha256(path)
        except (OSError, ValueError):
            continue  # reported missing by the size check
        report.bytes_hashed += int(stats.file_sizes.get(name, 0))
        if actual != expected:
            outcome.add(f"shard {shard}: {name} changed since it was written (sha256 differs)")


def _spread(items: list[Any], total: int) -> list[tuple[Any, int]]:
    """``total`` picks spread evenly over ``items``: (item, how many from it), deterministic."""
    if not items or total <= 0:
        return []
    if len(items) >= total:
        return [(items[i * len(items) // total], 1) for i in range(total)]
    base, extra = divmod(total, len(items))
    return [(item, base + (1 if i < extra else 0)) for i, item in enumerate(items)]


def _deep_sample(
    output: OutputFolder,
    shard: str,
    stats: ShardStats,
    wanted: int,
    options: DownloadOptions,
    checks: dict[str, CheckOutcome],
    report: VerificationReport,
) -> None:
    """Read the shard's parquet (rows, keys, sizes), then decode its first ``wanted`` images."""
    sizes = _parquet_sizes(output, shard, stats, options, checks) if _has_parquet(options) else None
    outcome = checks["samples_decode"]
    wanted = min(wanted, stats.successes)
    seen = 0
    try:
        for sample in shard_format(options.output_format).read_samples(output, shard, options.encode_format):
            seen += 1
            _verify_sample(shard, sample, sizes, outcome, report)
            if seen >= wanted:
                break
    except (ShardReadError, OSError, EOFError, ValueError) as error:
        outcome.add(f"shard {shard}: {_first_line(error)}")
        return
    if seen < wanted:
        outcome.add(f"shard {shard}: {stats.successes} successes recorded, only {seen} stored images found")


def _has_parquet(options: DownloadOptions) -> bool:
    return shard_format(options.output_format).writes_parquet


def _parquet_sizes(
    output: OutputFolder,
    shard: str,
    stats: ShardStats,
    options: DownloadOptions,
    checks: dict[str, CheckOutcome],
) -> dict[str, tuple[int, int]] | None:
    """Key -> (width, height) of the shard's successes; None (recorded) if the parquet is unreadable."""
    name = parquet_name(shard)
    try:
        with output.fs.open(output.path(name), "rb") as handle:
            table = pq.read_table(handle, columns=["key", "status", "width", "height"])
    except (OSError, ValueError, pa.ArrowException) as error:
        checks["rows_match_inputs"].add(f"shard {shard}: {name} is unreadable ({_first_line(error)})")
        return None
    if table.num_rows != stats.count:
        checks["rows_match_inputs"].add(
            f"shard {shard}: {table.num_rows} parquet rows, {stats.count} counted"
        )
    keys = table.column("key").to_pylist()
    low, high = _key_bounds(shard, options)
    outside = [k for k in keys if not (isinstance(k, str) and len(k) == len(low) and low <= k <= high)]
    if outside or len(set(keys)) != len(keys):
        checks["keys_unique"].add(
            f"shard {shard}: {name} has duplicate or out-of-range keys, e.g. {outside[:3]}"
        )
    columns = (table.column(c).to_pylist() for c in ("key", "status", "width", "height"))
    return {k: (w, h) for k, s, w, h in zip(*columns, strict=True) if s == SUCCESS}


def _verify_sample(
    shard: str,
    sample: ReadSample,
    sizes: dict[str, tuple[int, int]] | None,
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
    actual = (image.shape[1], image.shape[0])
    if sizes is not None:
        expected = sizes.get(key)
        if expected is None:
            outcome.add(f"shard {shard}: {key} is stored but not a success in the parquet")
        elif actual != expected:
            outcome.add(
                f"shard {shard}: {key} is {actual[0]}x{actual[1]}, metadata says {expected[0]}x{expected[1]}"
            )
    if meta is not None and (meta.get("width"), meta.get("height")) != actual:
        outcome.add(f"shard {shard}: {key}'s metadata size disagrees with the image")
