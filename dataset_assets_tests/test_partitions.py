"""Grouping shards into runs: what a backfill or the resume schedule asks one run to do."""

from __future__ import annotations

import pytest

from dataset_assets.partitions import RANGE_END_TAG, RANGE_START_TAG, partition_ranges, range_tags

KEYS = [f"{i:05d}" for i in range(10)]


@pytest.mark.parametrize(
    ("wanted", "max_per_run", "expected"),
    [
        (KEYS, 4, [("00000", "00003"), ("00004", "00007"), ("00008", "00009")]),
        # A range never spans a key that is not wanted (materialised, or running elsewhere).
        (
            ["00001", "00002", "00004", "00009"],
            8,
            [("00001", "00002"), ("00004", "00004"), ("00009", "00009")],
        ),
        (["00000", "00001", "00002"], 1, [("00000", "00000"), ("00001", "00001"), ("00002", "00002")]),
        (KEYS[:5], None, [("00000", "00004")]),  # no limit (BackfillPolicy.single_run)
        ([], 8, []),
        (["99999"], 8, []),  # not a registered key
    ],
)
def test_partition_ranges(
    wanted: list[str], max_per_run: int | None, expected: list[tuple[str, str]]
) -> None:
    assert partition_ranges(KEYS, set(wanted), max_per_run) == expected


def test_every_wanted_key_is_in_exactly_one_range() -> None:
    wanted = {k for i, k in enumerate(KEYS) if i % 3 != 1}
    covered = []
    for first, last in partition_ranges(KEYS, wanted, 2):
        covered += KEYS[KEYS.index(first) : KEYS.index(last) + 1]
    assert sorted(covered) == sorted(wanted)


def test_range_tags_are_dagsters() -> None:
    assert range_tags("00002", "00005") == {RANGE_START_TAG: "00002", RANGE_END_TAG: "00005"}
    assert RANGE_START_TAG == "dagster/asset_partition_range_start"
