"""The layouts a ``json`` URL list comes in, and the one DuckDB cannot read by itself.

img2dataset reads ``json`` input with pandas, so a list written by pandas' default
``DataFrame.to_json()`` is valid input: one object of columns, each mapping an index label to
the row's value (``{"url": {"0": "http://a/x.jpg", "1": ...}, "caption": {...}}``). DuckDB
reads a records array or JSON lines as a table, but would read that object as a single row of
wide structs, so it is turned into an Arrow table here. The column layout has to be parsed
whole (pandas does the same); records arrays and JSON lines still stream through DuckDB.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa

from dataset_assets.io.storage import StorageOptions, filesystem

ARRAY = "array"
LINES = "newline_delimited"
COLUMNS = "columns"

# Enough of the file to see how it starts, even after a long first key.
_PEEK_CHARS = 64 * 1024
# ``{"name": {`` : an object whose first value is an object, the start of the column layout.
_COLUMNS_START = re.compile(r'\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\{')


class JsonLayoutError(ValueError):
    """The file is not one of the JSON layouts a URL list may have; the message says what it is."""


def _open_text(path: str, compressed: bool, storage_options: StorageOptions | None) -> Any:
    fs, inner = filesystem(path, storage_options)
    return fs.open(inner, "rt", encoding="utf-8-sig", compression="gzip" if compressed else None)


def read_layout(
    path: str, compressed: bool, storage_options: StorageOptions | None = None
) -> tuple[str, pa.Table | None]:
    """The file's layout (:data:`ARRAY`, :data:`LINES`, :data:`COLUMNS`) from its first
    characters, and for the column layout its rows (the file had to be parsed whole to know).

    A file starting with ``{`` is JSON lines unless its first value is itself an object and the
    whole file is one object of objects (a JSON lines file whose first field is an object is
    still JSON lines: parsing it as one document stops at its second line).
    """
    try:
        with _open_text(path, compressed, storage_options) as handle:
            head = handle.read(_PEEK_CHARS).lstrip()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise JsonLayoutError(f"cannot be read as {'gzip-compressed ' if compressed else ''}JSON: {e}") from e
    if head.startswith("["):
        return ARRAY, None
    if not head.startswith("{"):
        found = repr(head[:20]) if head else "no JSON value"
        raise JsonLayoutError(
            "expected a JSON array of records, an object of columns (pandas' to_json) or JSON lines; "
            f"found {found}"
        )
    if _COLUMNS_START.match(head):
        columns = _load_columns(path, compressed, storage_options)
        if columns is not None:
            return COLUMNS, columns_table(columns)
    return LINES, None


def _load_columns(
    path: str, compressed: bool, storage_options: StorageOptions | None
) -> dict[str, dict[str, Any]] | None:
    """The file's object of columns, or None if the file is not one (JSON lines, one record)."""
    try:
        with _open_text(path, compressed, storage_options) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several documents: JSON lines
            return None
        raise JsonLayoutError(f"is not valid JSON: {e}") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise JsonLayoutError(f"cannot be read as JSON: {e}") from e
    if isinstance(data, dict) and data and all(isinstance(column, dict) for column in data.values()):
        return data
    return None


def columns_table(columns: dict[str, dict[str, Any]]) -> pa.Table:
    """Rows in index-label order as pandas reads them: labels in the order they first appear
    (the index order, for a file pandas wrote), each column's value looked up by label, so
    columns listing labels in different orders still line up; a label a column lacks is null."""
    labels: dict[str, None] = {}
    for column in columns.values():
        labels.update(dict.fromkeys(column))
    order = list(labels)
    return pa.table(
        {name: _array([column.get(label) for label in order]) for name, column in columns.items()}
    )


def _array(values: list[Any]) -> pa.Array:
    """Arrow's inference (int64, double, bool, string, lists, structs); a column mixing kinds
    (numbers and text) becomes text, as a pandas object column would be written."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values], pa.string()
        )
