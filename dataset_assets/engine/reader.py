"""Input reading: every supported format goes through one DuckDB table function and is streamed.

img2dataset loads each input file whole into a pyarrow table (its startup RAM spike, #338) and
reads txt as a one-column CSV, so a URL with a comma aborts the run. Here each file becomes a
DuckDB ``FROM`` expression (:func:`open_source`, shared with the planner) and rows arrive as Arrow
record batches of bounded size, sliced into shards with img2dataset's positional semantics:
files in sorted order, ``number_sample_per_shard`` rows per shard, shards never span files, shard
ids consecutive across files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.io.sources import (
    InputError,
    connect,
    input_columns,
    is_empty_file,
    list_input_files,
    one_line,
    open_source,
    release_source,
    sql_identifier,
    sql_string,
)
from dataset_assets.io.storage import StorageOptions

# Upper bound on rows per Arrow batch pulled from DuckDB: small shards still get large batches
# (a batch per 3-row shard would be slow) and huge shards don't make huge batches.
_MAX_BATCH_ROWS = 65_536
_MIN_BATCH_ROWS = 8_192


@dataclass
class InputShard:
    """One shard's input rows: ``url`` first, then ``caption`` and the other requested columns.

    ``url`` is the input's text exactly, so that the stored metadata joins back to the source
    by URL. What is requested is the trimmed ``url``, or the planner's normalised form where the
    table has the ``FETCH_URL_COLUMN`` of engine/options.py.
    """

    shard_id: int
    table: pa.Table
    # The planner's fingerprint of these rows (its footer), when known; the writer records it,
    # or one computed from ``table``, in the shard's stats (engine/fingerprint.py).
    fingerprint: str | None = None


def _resolve(name: str, found: list[str], what: str, path: str) -> str:
    """The file's spelling of a requested column; DuckDB itself matches names case-insensitively."""
    if name in found:
        return name
    lowered = [c for c in found if c.lower() == name.lower()]
    if len(lowered) == 1:
        return lowered[0]
    raise InputError(f"{what} {name!r} not found in {path}; columns found: {', '.join(found) or '(none)'}")


def _select_sql(
    con: duckdb.DuckDBPyConnection,
    path: str,
    options: DownloadOptions,
    storage_options: StorageOptions | None = None,
) -> str:
    """The per-file query producing the shard columns, after checking that they all exist.

    The other columns keep their inferred types (img2dataset's pandas reader does the same).
    """
    found = input_columns(con, path, options.input_format, storage_options)
    url = _resolve(options.url_col, found, "url_col", path)
    text_columns = [url]
    parts = [f"CAST({sql_identifier(url)} AS VARCHAR) AS url"]
    names = {"url"}
    if options.caption_col is not None:
        caption = _resolve(options.caption_col, found, "caption_col", path)
        text_columns.append(caption)
        parts.append(f"CAST({sql_identifier(caption)} AS VARCHAR) AS caption")
        names.add("caption")
    extra: list[tuple[str, str]] = [(c, "save_additional_columns") for c in options.save_additional_columns]
    if options.bbox_col:
        extra.append((options.bbox_col, "bbox_col"))
    if options.verify_hash is not None:
        extra.append((options.verify_hash[0], "verify_hash column"))
    for name, what in extra:
        column = _resolve(name, found, what, path)
        if name in names:
            continue
        names.add(name)
        parts.append(f"{sql_identifier(column)} AS {sql_identifier(name)}")
    source = open_source(
        con, path, options.input_format, text_columns=text_columns, storage_options=storage_options
    )
    return f"SELECT {', '.join(parts)} FROM {source}"


def _batches(con: duckdb.DuckDBPyConnection, sql: str, rows: int, path: str) -> Iterator[pa.RecordBatch]:
    """Stream a query as Arrow batches; errors (which may surface mid-file) name the file.

    ``con.sql(...).to_arrow_reader`` streams; ``con.execute(...)`` would materialise the result.
    """
    try:
        relation = con.sql(sql)
        # to_arrow_reader is DuckDB 2's name; 1.x calls it fetch_arrow_reader.
        make_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
        reader = make_reader(rows)
        yield from reader
    except (duckdb.Error, pa.ArrowException, OSError) as e:  # mid-stream errors come through Arrow
        raise InputError(f"cannot read {path}: {one_line(e)}") from e


def _batch_rows(number_sample_per_shard: int) -> int:
    return max(_MIN_BATCH_ROWS, min(number_sample_per_shard, _MAX_BATCH_ROWS))


def _parquet_rows(con: duckdb.DuckDBPyConnection, path: str) -> int:
    """Row count from the parquet footer, without reading any data page."""
    try:
        return int(
            con.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata({sql_string(path)})").fetchall()[0][
                0
            ]
        )
    except (duckdb.Error, TypeError) as e:
        raise InputError(f"cannot read {path} as parquet: {one_line(e)}") from e


def iter_input_shards(
    url_list: str | Sequence[str],
    options: DownloadOptions,
    *,
    start_shard_id: int = 0,
    skip: Callable[[int], bool] | None = None,
    storage_options: StorageOptions | None = None,
) -> Iterator[InputShard]:
    """Yield the input shards in order, holding at most about one shard plus one batch in memory.

    ``skip(shard_id)`` true means the shard is done: its rows are dropped as Arrow batches (never
    turned into Python objects) and, for parquet files whose shards are all skipped, not read at
    all. Null or empty URLs are kept so that the engine reports them as failed rows.
    """
    files = list_input_files(url_list, options.input_format, storage_options)
    nsps = options.number_sample_per_shard
    con = connect(files, storage_options=storage_options)
    shard_id = start_shard_id
    total = 0
    try:
        for path in files:
            if is_empty_file(path, storage_options):
                continue
            select = _select_sql(con, path, options, storage_options)
            if skip is not None and options.input_format == "parquet":
                rows = _parquet_rows(con, path)
                shards = -(-rows // nsps)
                if all(skip(shard_id + i) for i in range(shards)):
                    shard_id += shards
                    total += rows
                    continue
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            skipping = False
            schema: pa.Schema | None = None
            for batch in _batches(con, select, _batch_rows(nsps), path):
                schema = batch.schema
                offset = 0
                while offset < batch.num_rows:
                    if pending_rows == 0:
                        skipping = skip is not None and skip(shard_id)
                    take = min(nsps - pending_rows, batch.num_rows - offset)
                    if not skipping:
                        pending.append(batch.slice(offset, take))
                    pending_rows += take
                    offset += take
                    total += take
                    if pending_rows == nsps:
                        if not skipping:
                            yield InputShard(shard_id, pa.Table.from_batches(pending, schema))
                        pending, pending_rows = [], 0
                        shard_id += 1
            if pending_rows:
                if not skipping:
                    yield InputShard(shard_id, pa.Table.from_batches(pending, schema))
                shard_id += 1
            release_source(con, path)
    finally:
        con.close()
    if total == 0:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise InputError(f"input {shown} contains no rows")


def count_rows(
    url_list: str | Sequence[str], options: DownloadOptions, storage_options: StorageOptions | None = None
) -> int:
    """Total input rows, for progress bars: parquet from footers, text formats by a DuckDB scan."""
    files = list_input_files(url_list, options.input_format, storage_options)
    con = connect(files, storage_options=storage_options)
    total = 0
    try:
        for path in files:
            if is_empty_file(path, storage_options):
                continue
            if options.input_format == "parquet":
                total += _parquet_rows(con, path)
                continue
            source = open_source(con, path, options.input_format, storage_options=storage_options)
            try:
                total += int(con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0])
            except duckdb.Error as e:
                raise InputError(f"cannot read {path}: {one_line(e)}") from e
            release_source(con, path)
    finally:
        con.close()
    return total
