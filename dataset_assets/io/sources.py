"""DuckDB sources: every input format as one ``FROM`` expression, local or remote.

The engine's reader (which slices rows into shards) and the planner (which filters and
de-duplicates the list) read URL lists through these helpers, so a format, a remote filesystem
or a quoting rule is handled in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import duckdb

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


class InputError(ValueError):
    """Bad input: message names the file and, for a missing column, the columns found."""


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


def source_sql(path: str, input_format: str) -> str:
    """A DuckDB ``FROM``-able expression reading every column of one input file.

    Text formats are read as VARCHAR: DuckDB infers types from a sample, and a later value that
    does not fit (a "N/A" after 20k integers) aborts the scan mid-file, after shards were handed
    out. JSON is sniffed over the whole file for the same reason (its types are explicit, so the
    columns keep their JSON types). Completely blank txt lines are not rows, as in img2dataset
    (pyarrow skips them); a line of spaces is a row with an empty URL.
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
        return (
            f"read_csv({p}, header=true, delim={sql_string(delim)}, quote='\"', escape='\"', "
            f"all_varchar=true{compression})"
        )
    if base in ("json", "jsonl"):
        fmt = "array" if base == "json" else "newline_delimited"
        return f"read_json({p}, format='{fmt}', sample_size=-1{compression})"
    return f"read_parquet({p})"


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


def input_columns(con: duckdb.DuckDBPyConnection, path: str, input_format: str) -> list[str]:
    """Column names of one input file, without reading its rows (JSON is sniffed, see source_sql)."""
    try:
        rows = con.sql(f"DESCRIBE SELECT * FROM {source_sql(path, input_format)}").fetchall()
    except duckdb.Error as e:
        raise InputError(f"cannot read {path} as {input_format}: {e}") from e
    return [r[0] for r in rows]


def is_empty_file(path: str, storage_options: StorageOptions | None = None) -> bool:
    """A 0-byte file holds no rows; DuckDB would instead invent a column or call it corrupt."""
    fs, p = filesystem(path, storage_options)
    try:
        return fs.size(p) == 0
    except OSError:
        return False
