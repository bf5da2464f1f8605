"""Metadata values that read as what they are: rounded, with units, typed for the UI.

How the UI shows asset metadata (dagster-webserver 1.13, ui-core ``AssetMaterializationGraphs``
and ``MetadataEntry``): every ``int`` and ``float`` entry gets a chart (by partition, or by time
for an unpartitioned asset), one chart per key, the keys sorted alphabetically; every other
entry is shown as a value (text, path, table, timestamp, JSON). So only the figures worth a chart
are numbers; everything else is text with its unit, or a path, a table, a timestamp, and a chart
page holds the figures a user looks at first, not a flat line of row counts before them.

Dagster has no bytes type. The one formatted byte count is ``dagster/size_bytes`` (the asset
page's "Storage"), and like ``dagster/row_count`` ("Row count") the asset page reads it from the
latest materialization: on a partitioned asset that is one partition's, shown as if it were the
asset's. So both are set only on the roll-up (``dataset_verification``), and byte counts are
text elsewhere: ``"1.23 MB (1,234,567 bytes)"``, the exact count kept in the words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import dagster as dg

_UNITS = ("kB", "MB", "GB", "TB", "PB")
RATE_DIGITS = 4  # success rates: 0.9731 (a hundredth of a percent)
SPEED_DIGITS = 1  # images per second
MAX_FAILURE_ROWS = 50  # reasons listed in a failures table; the rest are one row


def human_bytes(size: int) -> str:
    """Decimal units (as disks and object stores bill), three significant digits, exact count."""
    size = int(size)
    if size < 1000:
        return f"{size:,} bytes"
    value = size / 1000
    power = 0
    while float(f"{value:.3g}") >= 1000 and power < len(_UNITS) - 1:
        value /= 1000
        power += 1
    shown = f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
    return f"{shown} {_UNITS[power]} ({size:,} bytes)"


def rate(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), RATE_DIGITS))


def speed(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), SPEED_DIGITS))


def seconds(value: float) -> dg.MetadataValue:
    """A duration as text to a tenth of a second: shown, not charted."""
    return dg.MetadataValue.text(f"{float(value):.1f} s")


def count_text(value: int, unit: str) -> dg.MetadataValue:
    return dg.MetadataValue.text(f"{int(value):,} {unit}")


def failures_table(counts: Mapping[str, int], rows: int) -> dg.MetadataValue:
    """Failure reasons, most frequent first, with their share of all rows."""
    ordered = sorted(((str(r), int(n)) for r, n in counts.items() if n), key=lambda x: (-x[1], x[0]))
    shown, rest = ordered[:MAX_FAILURE_ROWS], ordered[MAX_FAILURE_ROWS:]
    if rest:
        shown.append((f"{len(rest)} other reasons", sum(n for _, n in rest)))
    records = [
        dg.TableRecord({"reason": reason, "count": n, "share": f"{n / rows:.2%}" if rows else ""})
        for reason, n in shown
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("reason", "string"),
            dg.TableColumn("count", "int"),
            dg.TableColumn("share", "string", description="of all rows"),
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def files_table(files: Iterable[tuple[str, int | None]]) -> dg.MetadataValue:
    """(path or URL, size in bytes or None where none was recorded) as a table, one file a row.

    The stats file is written after the sizes it records, so it has none; nor has a folder."""
    records = [
        dg.TableRecord(
            {
                "file": path,
                "size": human_bytes(size) if size is not None else "not recorded",
                "bytes": size or 0,
            }
        )
        for path, size in files
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("file", "string"),
            dg.TableColumn("size", "string"),
            dg.TableColumn("bytes", "int"),
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)
