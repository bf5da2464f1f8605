"""DuckDB sources: every input format as one ``FROM`` expression, local or remote.

The engine's reader (which slices rows into shards) and the planner (which filters and
de-duplicates the list) read URL lists through these helpers, so a format, a remote filesystem
or a quoting rule is handled in one place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import duckdb

from dataset_assets.io import json_layout
from dataset_assets.io.storage import StorageOptions, filesystem, is_local_fs, protocol_of

INPUT_FORMATS = (
    "txt",
    "txt.gz",
    "csv",
    "csv.gz",
    "tsv",
    "tsv.gz",
    "json",
    "json.gz",
    "jsonl",
    "jsonl.gz",
    "parquet",
)
# A multi-byte control sequence as the "delimiter" of txt input, so that every line is one field
# whatever it contains (commas, tabs, quotes, even a stray 0x1f). DuckDB accepts up to 4 bytes.
_TXT_DELIMITER = "\x1f\x1e\x1d\x1c"
# The types a CSV/TSV column may be inferred as: the numbers and booleans pandas (img2dataset's
# reader) infers, without the dates and times DuckDB would find and pandas leaves as text.
_CSV_TYPE_CANDIDATES = "['BOOLEAN', 'BIGINT', 'DOUBLE', 'VARCHAR']"
# Registered Arrow views of column-layout json files (see io/json_layout.py), one per path.
_JSON_VIEW_PREFIX = "__json_columns_"


class InputError(ValueError):
    """Bad input: message names the file and, for a missing column, the columns found."""


def one_line(error: BaseException) -> str:
    """The first line of an error: DuckDB appends a page of "possible fixes" to CSV errors, and
    a bad input file is reported on one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def sql_string(value: str) -> str:
    """A SQL string literal; paths come from users and may contain quotes."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """A quoted SQL identifier; input column names may contain spaces, quotes or upper case."""
    return '"' + name.replace('"', '""') + '"'


def _check_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise InputError(f"input_format={input_format!r} is not one of {', '.join(INPUT_FORMATS)}")


def list_input_files(
    url_list: str | Sequence[str], input_format: str, storage_options: StorageOptions | None = None
) -> list[str]:
    """The input files in img2dataset's order: a folder gives its sorted ``*.{input_format}``.

    Goes through fsspec, so remote URLs (``s3://bucket/prefix/``) resolve the same way; remote
    files come back as full URLs, which :func:`connect` makes readable by DuckDB.
    """
    _check_format(input_format)
    entries = [url_list] if isinstance(url_list, (str, os.PathLike)) else list(url_list)
    if not entries:
        raise InputError("url_list is empty")
    files: list[str] = []
    for entry in entries:
        entry = os.fspath(entry)
        fs, path = filesystem(entry, storage_options)
        local = is_local_fs(fs)
        if fs.isdir(path):
            pattern = path.rstrip("/") + "/*." + input_format
            found = sorted(fs.glob(pattern))
            if not found:
                raise InputError(f"no *.{input_format} files in folder {entry}")
            files.extend(p if local else fs.unstrip_protocol(p) for p in found)
        elif fs.isfile(path):
            files.append(os.path.abspath(path) if local else entry)
        else:
            raise InputError(f"input {entry} does not exist")
    return files


def source_sql(
    path: str,
    input_format: str,
    *,
    text_columns: Sequence[str] | None = None,
    json_format: str = json_layout.ARRAY,
) -> str:
    """A DuckDB ``FROM``-able expression reading every column of one input file.

    CSV/TSV columns keep the types a whole-file look infers (numbers stay numbers in the
    shards' metadata, as with img2dataset's pandas reader) when ``text_columns`` is given:
    those columns (url, caption) are read as text whatever they look like. The types are sniffed
    over the whole file, which costs a second pass, because a sample would let a later value
    that does not fit (a "N/A" after 20k integers) abort the scan mid-file, after shards were
    handed out. Without ``text_columns`` every column is VARCHAR, which needs no sniffing: enough
    for column names and row counts. JSON is sniffed over the whole file for the same reason;
    ``json_format`` is DuckDB's name of its layout (:func:`open_source` finds it). Completely
    blank txt lines are not rows, as in img2dataset (pyarrow skips them); a line of spaces is
    a row with an empty URL.
    """
    _check_format(input_format)
    p = sql_string(path)
    base, _, compressed = input_format.partition(".")
    compression = ", compression='gzip'" if compressed else ""
    if base == "txt":
        return (
            f"(SELECT url FROM read_csv({p}, header=false, columns={{'url': 'VARCHAR'}}, "
            f"delim={sql_string(_TXT_DELIMITER)}, quote='', escape='', auto_detect=false, "
            f"strict_mode=false{compression}) WHERE url IS NOT NULL)"
        )
    if base in ("csv", "tsv"):
        delim = "," if base == "csv" else "\t"
        if text_columns is None:
            types = "all_varchar=true"
        else:
            types = f"sample_size=-1, auto_type_candidates={_CSV_TYPE_CANDIDATES}"
            if text_columns:
                fields = ", ".join(f"{sql_string(c)}: 'VARCHAR'" for c in dict.fromkeys(text_columns))
                types += f", types={{{fields}}}"
        return (
            f"read_csv({p}, header=true, delim={sql_string(delim)}, quote='\"', escape='\"', "
            f"{types}{compression})"
        )
    if base in ("json", "jsonl"):
        fmt = json_format if base == "json" else json_layout.LINES
        return f"read_json({p}, format='{fmt}', sample_size=-1{compression})"
    return f"read_parquet({p})"


def _json_view(path: str) -> str:
    return _JSON_VIEW_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:16]


def _has_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()[0][0]
    )


def open_source(
    con: duckdb.DuckDBPyConnection,
    path: str,
    input_format: str,
    *,
    text_columns: Sequence[str] | None = None,
    storage_options: StorageOptions | None = None,
) -> str:
    """:func:`source_sql` for the file as it is laid out, registered on ``con`` if need be.

    ``json`` input may be a records array, JSON lines or pandas' object of columns; the last is
    parsed here and registered as an Arrow view (kept until :func:`release_source`), as DuckDB
    cannot read it as rows.
    """
    _check_format(input_format)
    base, _, compressed = input_format.partition(".")
    if base != "json":
        return source_sql(path, input_format, text_columns=text_columns)
    view = _json_view(path)
    if _has_view(con, view):
        return view
    try:
        layout, table = json_layout.read_layout(path, bool(compressed), storage_options)
    except json_layout.JsonLayoutError as e:
        raise InputError(f"{path} {e}") from e
    if table is None:
        return source_sql(path, input_format, json_format=layout)
    con.register(view, table)
    return view


def release_source(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Free what :func:`open_source` registered for ``path`` (the parsed rows of a json file)."""
    view = _json_view(path)
    if _has_view(con, view):
        con.unregister(view)


def connect(
    files: Sequence[str] = (),
    *,
    threads: int = 2,
    memory_limit: str | None = None,
    storage_options: StorageOptions | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection set up to read ``files`` in order.

    Insertion order is kept explicitly: shard contents and keys are positional. Remote files are
    read through their fsspec filesystem (built with ``storage_options``) registered with
    DuckDB: DuckDB's own httpfs extension is not needed, so nothing is downloaded at run time
    (it cannot be, offline) and credentials / endpoints (MinIO, R2) are configured in one place.
    """
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = true")
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    registered: set[str] = set()
    for f in files:
        fs, _ = filesystem(f, storage_options)
        if is_local_fs(fs):
            continue
        protocol = protocol_of(fs)
        if protocol not in registered:
            con.register_filesystem(fs)
            registered.add(protocol)
    return con


def input_columns(
    con: duckdb.DuckDBPyConnection,
    path: str,
    input_format: str,
    storage_options: StorageOptions | None = None,
) -> list[str]:
    """Column names of one input file, without reading its rows (JSON is sniffed, see source_sql)."""
    source = open_source(con, path, input_format, storage_options=storage_options)
    try:
        rows = con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()
    except duckdb.Error as e:
        raise InputError(f"cannot read {path} as {input_format}: {one_line(e)}") from e
    return [r[0] for r in rows]


def is_empty_file(path: str, storage_options: StorageOptions | None = None) -> bool:
    """A 0-byte file holds no rows; DuckDB would instead invent a column or call it corrupt."""
    fs, p = filesystem(path, storage_options)
    try:
        return fs.size(p) == 0
    except OSError:
        return False
