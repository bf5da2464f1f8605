"""Per-shard quality gates, judged while the shard is written (no second read of its files).

Why here: the writer already holds every result, every encoded image with the size the image
stage recorded, and the digest of every byte it wrote. Judging a shard from those costs a
header parse per image and one metadata request per committed file, where re-reading the
shard (verification) costs a download and a full decode of every image.

What each gate proves, honestly:

* ``shard_rows_match_input``: one result per input row, one parquet row per input row, and
  one stored sample per success (where the format stores images).
* ``shard_keys_unique``: every row index was seen once and lies in the shard's key range
  (below ``number_sample_per_shard``, so no key spills into the next shard's range).
* ``shard_images_match_size``: every stored image's encoded header declares the width and
  height recorded for it. The header is parsed, the pixels are not decoded: a file truncated
  after its header passes here (``dataset_verification``'s decode check is the full test).
* ``shard_files_match_checksums``: each committed file's size on the store equals the bytes
  the writer hashed while writing it (the recorded sha256 is that hash). A corruption that
  keeps the size is not seen here; verification re-hashes. A ``files`` folder is not hashed.
* ``shard_success_rate``: successes over rows the sites allowed (opt-outs excluded: retrying
  cannot change a refusal) at least ``success_rate_floor``. A shard whose host was down fails
  it, so a "failed and missing" backfill redoes it.

The internal-error guard is not a gate but a refusal: a shard in which more than
``max_internal_error_share`` of the rows hit a bug is not committed at all (:class:`ShardRefused`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dataset_assets.engine.image import header_size
from dataset_assets.engine.records import INTERNAL_ERROR, SUCCESS, SampleResult

MAX_INTERNAL_ERROR_SHARE = 0.05
_EXAMPLES = 3  # offending keys named per gate

GATES: dict[str, str] = {
    "shard_rows_match_input": "One result and one parquet row per input row; one stored sample per success.",
    "shard_keys_unique": "Every key appears once and lies in the shard's key range.",
    "shard_images_match_size": "Every stored image's header declares the width and height recorded for it.",
    "shard_files_match_checksums": "Each committed file's size equals the bytes hashed while writing it.",
    "shard_success_rate": "Successes over rows not opted out are at least success_rate_floor.",
}


class ShardRefused(RuntimeError):
    """A shard is not committed (too many internal errors); the message names it and why."""


@dataclass(frozen=True)
class ShardGates:
    """What the writer judges a shard by; the CLI's defaults never fail a shard on its rate."""

    success_rate_floor: float = 0.0
    max_internal_error_share: float = MAX_INTERNAL_ERROR_SHARE


@dataclass
class ShardFacts:
    """What the writer observes about one shard as results stream through it."""

    expected: int
    number_sample_per_shard: int
    stores_images: bool
    seen: bytearray = field(init=False)
    duplicates: list[int] = field(default_factory=list)
    out_of_range: list[int] = field(default_factory=list)
    bad_images: list[str] = field(default_factory=list)  # "index: why"
    bad_image_count: int = 0
    stored: int = 0
    parquet_rows: int = 0
    internal_errors: int = 0
    first_internal_error: str | None = None
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (size hashed, size stored)
    unhashed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen = bytearray(max(self.expected, 0))

    def observe(self, result: SampleResult) -> None:
        index = result.index
        if not 0 <= index < min(self.expected, self.number_sample_per_shard):
            self.out_of_range.append(index)
        elif self.seen[index]:
            self.duplicates.append(index)
        else:
            self.seen[index] = 1
        message = result.error_message or ""
        if result.status != SUCCESS and message.startswith(INTERNAL_ERROR):
            self.internal_errors += 1
            self.first_internal_error = self.first_internal_error or message
        if result.status == SUCCESS and self.stores_images:
            self._check_image(result)

    def _check_image(self, result: SampleResult) -> None:
        if result.image is None:
            why = "no image bytes"
        else:
            size = header_size(result.image)
            if size is None:
                why = "no readable image header"
            elif size != (result.width, result.height):
                why = f"header says {size[0]}x{size[1]}, recorded {result.width}x{result.height}"
            else:
                return
        self.bad_image_count += 1
        if len(self.bad_images) < _EXAMPLES:
            self.bad_images.append(f"row {result.index}: {why}")


def internal_error_refusal(shard: str, count: int, facts: ShardFacts, gates: ShardGates) -> str | None:
    """Why the shard must not be committed, or None."""
    if not count or facts.internal_errors <= gates.max_internal_error_share * count:
        return None
    return (
        f"shard {shard}: {facts.internal_errors} of {count} rows are internal errors "
        f"(more than {gates.max_internal_error_share:.0%}); not committed. "
        f"First: {facts.first_internal_error}"
    )


def _gate(passed: bool, summary: str) -> dict[str, Any]:
    return {"passed": passed, "summary": summary}


def evaluate(
    stats: Any, facts: ShardFacts, gates: ShardGates, writes_parquet: bool
) -> dict[str, dict[str, Any]]:
    """Each gate's outcome (``passed`` and a one-line ``summary``), from what the writer saw."""
    rows_problems = []
    if stats.count != facts.expected:
        rows_problems.append(f"{stats.count} results for {facts.expected} input rows")
    if writes_parquet and facts.parquet_rows != facts.expected:
        rows_problems.append(f"{facts.parquet_rows} parquet rows for {facts.expected} input rows")
    if facts.stores_images and facts.stored != stats.successes:
        rows_problems.append(f"{facts.stored} stored samples for {stats.successes} successes")
    missing = facts.expected - sum(facts.seen)
    key_problems = []
    if facts.duplicates:
        key_problems.append(f"{len(facts.duplicates)} duplicate row(s), e.g. {facts.duplicates[:_EXAMPLES]}")
    if facts.out_of_range:
        last = min(facts.expected, facts.number_sample_per_shard) - 1
        key_problems.append(
            f"{len(facts.out_of_range)} row(s) outside 0..{last}, e.g. {facts.out_of_range[:_EXAMPLES]}"
        )
    if missing and not key_problems:
        key_problems.append(f"{missing} row(s) never came back")
    mismatched = {name: sizes for name, sizes in facts.files.items() if sizes[0] != sizes[1]}
    opted_out = sum(stats.opt_outs.values())
    allowed = stats.count - opted_out
    rate = stats.successes / allowed if allowed else 1.0
    return {
        "shard_rows_match_input": _gate(
            not rows_problems, "; ".join(rows_problems) or f"{facts.expected} rows, {stats.successes} stored"
        ),
        "shard_keys_unique": _gate(
            not key_problems, "; ".join(key_problems) or f"{facts.expected} unique keys"
        ),
        "shard_images_match_size": _gate(
            not facts.bad_image_count,
            f"{facts.bad_image_count} image(s) disagree with their record: {'; '.join(facts.bad_images)}"
            if facts.bad_image_count
            else f"{facts.stored if facts.stores_images else 0} image header(s) match",
        ),
        "shard_files_match_checksums": _gate(
            not mismatched,
            "; ".join(f"{n}: {a} bytes hashed, {b} stored" for n, (a, b) in mismatched.items())
            or f"{len(facts.files)} file(s) match"
            + (f" ({', '.join(facts.unhashed)} not hashed)" if facts.unhashed else ""),
        ),
        "shard_success_rate": _gate(
            rate >= gates.success_rate_floor,
            f"{stats.successes}/{allowed} rows not opted out "
            f"({rate:.1%}; floor {gates.success_rate_floor:.1%})",
        ),
    }
