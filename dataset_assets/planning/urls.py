"""URL normalisation, validation, de-duplication and metadata filters, all as DuckDB SQL.

img2dataset downloads every input row, duplicates and unusable URLs included, and leaves LAION
style metadata filters (size, similarity, NSFW and watermark scores) to separate tooling. Doing
them here, before sharding, saves the requests and makes the shard inputs a deterministic
function of (input files, settings). Every rule reports exactly how many rows it removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from dataset_assets.engine.consent.blocklist import Blocklist, load_blocklist
from dataset_assets.engine.options import FETCH_URL_COLUMN, DownloadOptions
from dataset_assets.engine.url_form import (
    HOST_IN_AUTHORITY_PATTERN,
    HOSTPORT_PATTERN,
    URL_PATTERN,
    URL_WHITESPACE,
)
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
from dataset_assets.io.storage import StorageOptions, staged_file
from dataset_assets.schema.option import OptionError, check, option, shared

# URLs that are already in normal form (the vast majority): lower-case http(s) scheme and host,
# a path, nothing to encode, no fragment, no surrounding whitespace. Checking this is ~10x
# cheaper than parsing, so only the rest goes through the full normalisation.
# (The other URL patterns are shared with the engine's Python normaliser, engine/url_form.py.)
_NORMAL_PATTERN = r"^https?://[a-z0-9.\-]+(:[0-9]{1,5})?/[\x21-\x22\x24-\x7e]*"

_MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
_INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
_TOP_DOMAINS = 20


@dataclass
class FilterSettings:
    """Which rows to keep. A filter runs only when set and when its column is in every input file.

    Each rule's name in :class:`FilterReport` is its option's name.
    """

    url_col: str = shared(DownloadOptions, "url_col")
    caption_col: str | None = shared(DownloadOptions, "caption_col")
    save_additional_columns: tuple[str, ...] = shared(DownloadOptions, "save_additional_columns")
    min_caption_length: int | None = option(None, "Drop rows whose caption is shorter (characters).", ge=0)
    min_width: int | None = option(None, "Drop rows whose declared width (width_col) is smaller.", ge=0)
    min_height: int | None = option(None, "Drop rows whose declared height (height_col) is smaller.", ge=0)
    # LAION's names; DuckDB matches column names case-insensitively
    width_col: str = option("WIDTH", "Column of the declared image width.")
    height_col: str = option("HEIGHT", "Column of the declared image height.")
    max_filter_aspect_ratio: float | None = option(
        None, "Drop rows whose declared long/short side ratio exceeds this.", gt=0
    )
    min_similarity: float | None = option(None, "Drop rows whose similarity_col is lower.")
    similarity_col: str = option("similarity", "Column of the image-text similarity score.")
    max_punsafe: float | None = option(None, "Drop rows whose punsafe_col (NSFW probability) is higher.")
    punsafe_col: str = option("punsafe", "Column of the NSFW probability.")
    max_pwatermark: float | None = option(None, "Drop rows whose pwatermark_col is higher.")
    pwatermark_col: str = option("pwatermark", "Column of the watermark probability.")
    allowed_domains: tuple[str, ...] = option(
        (), "Keep only these domains (suffix match: example.com keeps img.example.com)."
    )
    denied_domains: tuple[str, ...] = option((), "Drop these domains (suffix match).")
    url_blocklist: str | None = shared(DownloadOptions, "url_blocklist")
    shuffle_seed: int | None = option(
        None, "Shuffle rows deterministically, spreading each host's URLs over the shards."
    )
    # De-duplication and the shuffle hold every row's URL: at LAION scale (billions of rows) that
    # is far more than memory, and DuckDB spills the rest to disk.
    planner_memory_limit: str = option(
        "2GB", "New: DuckDB's memory_limit while planning (e.g. 2GB, 48GiB); beyond it, DuckDB spills."
    )
    planner_temp_directory: str | None = option(
        None,
        "New: local folder DuckDB spills to while planning (a fresh subfolder, removed after); "
        "none = the system's temporary folder. Give it room for about the input's size.",
    )

    def __post_init__(self) -> None:
        # Config systems hand over lists (or None) where tuples are stored.
        for name in ("save_additional_columns", "allowed_domains", "denied_domains"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, ())
            elif isinstance(value, str):
                setattr(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
            else:
                setattr(self, name, tuple(value))
        check(self)
        if not _MEMORY_SIZE.match(str(self.planner_memory_limit).strip()):
            raise OptionError(
                f"planner_memory_limit must be a size such as 2GB or 48GiB, not {self.planner_memory_limit!r}"
            )


@contextlib.contextmanager
def planner_connection(
    files: Sequence[str], settings: FilterSettings, storage_options: StorageOptions | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The planner's DuckDB connection: its memory limit and its own spill folder, removed after."""
    parent = settings.planner_temp_directory
    if parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="plan-duckdb-", dir=parent or None) as spill:
        con = connect(
            files,
            threads=max(1, min(os.cpu_count() or 1, 8)),
            memory_limit=settings.planner_memory_limit.strip(),
            storage_options=storage_options,
        )
        try:
            con.execute(f"SET temp_directory = {sql_string(spill)}")
            yield con
        finally:
            con.close()


@dataclass
class FilterReport:
    """Exact, sequential counts: each rule counts only rows that survived the rules before it."""

    rows_in: int
    removed: dict[str, int]
    skipped_rules: dict[str, str]
    rows_out: int
    top_domains: list[tuple[str, int]]
    columns: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for Dagster asset metadata."""
        data = asdict(self)
        data["top_domains"] = [[d, n] for d, n in self.top_domains]
        return data


def _encode_sql(text: str) -> str:
    """Percent-encode UTF-8 bytes of spaces, controls and non-ASCII characters; ASCII is untouched.

    The character-by-character path only runs for strings that need it (most URLs are ASCII).
    """
    per_char = (
        f"array_to_string(list_transform(string_split({text}, ''), lambda __nu_c: "
        "CASE WHEN unicode(__nu_c) BETWEEN 33 AND 126 THEN __nu_c "
        "ELSE regexp_replace(hex(encode(__nu_c)), '(..)', '%\\1', 'g') END), '')"
    )
    return f"CASE WHEN regexp_matches({text}, '[^\\x21-\\x7e]') THEN {per_char} ELSE {text} END"


def _normalize_sql(expr: str, *, http_only: bool) -> str:
    # The URL is parsed once into a struct and bound to a lambda parameter, so the (costly)
    # regular expression is not repeated for each part.
    trimmed = f"trim(CAST(({expr}) AS VARCHAR), {sql_string(URL_WHITESPACE)})"
    parts = (
        f"regexp_extract({trimmed}, {sql_string(URL_PATTERN)}, ['scheme', 'userinfo', 'hostport', 'rest'])"
    )
    encoded = _encode_sql("__nu_p.rest")
    empty_path = "__nu_p.rest = '' OR starts_with(__nu_p.rest, '?')"
    path = f"CASE WHEN {empty_path} THEN '/' || {encoded} ELSE {encoded} END"
    condition = "__nu_p.scheme <> ''"
    if http_only:
        condition = (
            "lower(__nu_p.scheme) IN ('http', 'https') "
            f"AND regexp_matches(__nu_p.hostport, {sql_string(HOSTPORT_PATTERN)})"
        )
    body = (
        f"CASE WHEN {condition} THEN lower(__nu_p.scheme) || '://' || __nu_p.userinfo "
        f"|| lower(__nu_p.hostport) || {path} END"
    )
    full = f"list_transform([{parts}], lambda __nu_p: {body})[1]"
    text = f"CAST(({expr}) AS VARCHAR)"
    return f"CASE WHEN regexp_full_match({text}, {sql_string(_NORMAL_PATTERN)}) THEN {text} ELSE {full} END"


def normalize_url_sql(expr: str) -> str:
    """A SQL expression giving the normalised form of the URL in ``expr`` (NULL if unparseable).

    Two spellings of one resource must compare equal for de-duplication, and the engine should
    fetch a URL that HTTP clients accept. So: surrounding whitespace trimmed; scheme and host
    lower-cased (path and query keep their case); the ``#fragment`` dropped (never sent to the
    server); an empty path becomes ``/``; spaces, control and non-ASCII characters of path and
    query percent-encoded as UTF-8 bytes, while existing ``%XX`` sequences are left alone.
    Internationalised host names are only lower-cased, not converted to punycode (DuckDB has no
    IDNA function); HTTP clients do that conversion when connecting. Anything that is not
    ``scheme://authority...`` gives NULL.
    """
    return _normalize_sql(expr, http_only=False)


def _authority_sql(normalized_url: str) -> str:
    # A normalised URL is "scheme://authority/...", so the authority is the third "/" field;
    # much cheaper than a regular expression over the whole URL.
    return f"split_part({normalized_url}, '/', 3)"


def _host_in_authority_sql(authority: str) -> str:
    return f"regexp_extract({authority}, {sql_string(HOST_IN_AUTHORITY_PATTERN)}, 1)"


def host_sql(normalized_url: str) -> str:
    """The host (without userinfo or port) of a URL produced by :func:`normalize_url_sql`."""
    return _host_in_authority_sql(_authority_sql(normalized_url))


def _domain_regex(domains: Sequence[str]) -> str:
    cleaned = []
    for d in domains:
        d = d.strip().lower().lstrip("*").strip(".")
        if d:
            cleaned.append("".join("\\" + ch if ch in r"\.^$|?*+()[]{}" else ch for ch in d))
    # Matched against the authority ("user@host.:port"), so that no host needs extracting.
    return "(^|[.@])(" + "|".join(cleaned) + ")\\.?(:[0-9]*)?$" if cleaned else ""


def _double(value: float) -> str:
    """A DOUBLE literal; going through a string keeps inf and nan valid SQL."""
    return f"CAST({sql_string(repr(float(value)))} AS DOUBLE)"


def _resolve(name: str, columns: list[str]) -> str | None:
    """The file's spelling of a column; DuckDB resolves identifiers case-insensitively anyway."""
    if name in columns:
        return name
    matches = [c for c in columns if c.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _common_types(
    con: duckdb.DuckDBPyConnection, sources: dict[str, str], columns: list[str]
) -> dict[str, str]:
    """One type per carried column for files whose inferred types differ (a score column that
    is all numbers in one file and has an "N/A" in another): the wider number, else text.
    Columns of one type everywhere are left out (nothing to cast)."""
    seen: dict[str, set[str]] = {c: set() for c in columns}
    for f, source in sources.items():
        try:
            described = con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()
        except duckdb.Error as e:
            raise InputError(f"cannot read {f}: {one_line(e)}") from e
        by_name = {str(name).lower(): str(kind) for name, kind, *_ in described}
        for c in columns:
            seen[c].add(by_name.get(c.lower(), "VARCHAR"))
    common: dict[str, str] = {}
    for c, kinds in seen.items():
        if len(kinds) <= 1:
            continue
        if kinds <= _INTEGER_TYPES:
            common[c] = "BIGINT"
        elif all(k in _INTEGER_TYPES or k in _FLOAT_TYPES or k.startswith("DECIMAL") for k in kinds):
            common[c] = "DOUBLE"
        else:
            common[c] = "VARCHAR"
    return common


def _blocklist_condition(
    con: duckdb.DuckDBPyConnection, base: str, blocklist: Blocklist, entries: str, hosts: str
) -> str:
    """The SQL condition that removes the rows the url_blocklist names (engine/consent/blocklist.py).

    The entries go into one table (a hash join per kind, whatever the list's size): URLs are
    compared in normal form (``fetch_url``), digests with the sha256 of the URL as given and of
    its normal form; domains are matched once per distinct host of the input (each host and its
    parent domains against the list), so the per-row test is one look-up in those hosts.
    """
    fetch = FETCH_URL_COLUMN
    view = f"{entries}_arrow"
    kinds = ["url"] * len(blocklist.urls) + ["sha256"] * len(blocklist.digests)
    kinds += ["domain"] * len(blocklist.domains)
    values = [*blocklist.urls, *blocklist.digests, *blocklist.domains]
    table = pa.table({"kind": pa.array(kinds, pa.string()), "value": pa.array(values, pa.string())})
    con.register(view, table)
    try:
        con.execute(f"CREATE TEMP TABLE {entries} AS SELECT kind, value FROM {view}")
    finally:
        con.unregister(view)

    def listed(kind: str) -> str:
        return f"(SELECT value FROM {entries} WHERE kind = {sql_string(kind)})"

    parts = []
    if blocklist.urls:
        parts.append(f"{fetch} IN {listed('url')}")
    if blocklist.digests:
        parts.append(f"sha256(url) IN {listed('sha256')} OR sha256({fetch}) IN {listed('sha256')}")
    if blocklist.domains:
        host = f"rtrim({host_sql(fetch)}, '.')"
        labels = "string_split(__bl_host, '.')"
        suffixes = (
            f"CASE WHEN regexp_full_match(__bl_host, '[0-9.]+|\\[.*\\]') THEN [__bl_host] ELSE "
            f"list_transform(range(1, len({labels}) + 1), "
            f"lambda __bl_i: array_to_string({labels}[__bl_i:], '.')) END"
        )
        con.execute(
            f"CREATE TEMP TABLE {hosts} AS SELECT DISTINCT h.__bl_host AS host FROM "
            f"(SELECT __bl_host, unnest({suffixes}) AS __bl_suffix FROM "
            f"(SELECT DISTINCT {host} AS __bl_host FROM {base} WHERE {fetch} IS NOT NULL)) h "
            f"SEMI JOIN {listed('domain')} d ON h.__bl_suffix = d.value"
        )
        parts.append(f"{host} IN (SELECT host FROM {hosts})")
    return " OR ".join(f"({part})" for part in parts)


def _missing_message(what: str, name: str, path: str, columns: list[str]) -> str:
    return f"{what} {name!r} not found in {path}; columns found: {', '.join(columns) or '(none)'}"


def filter_urls(
    url_list: str | Sequence[str],
    input_format: str,
    output_path: str,
    settings: FilterSettings,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    storage_options: StorageOptions | None = None,
) -> FilterReport:
    """Write the normalised, de-duplicated, filtered URL list to one parquet file.

    Rules run in a fixed order (invalid_url, duplicate, then the filters in FilterSettings
    order) and the first occurrence of a URL in input order is the one kept. Input order is
    kept unless ``shuffle_seed`` is set. The output holds ``url`` (the input's text, so that the
    dataset joins back to the source metadata by URL), ``fetch_url`` (its normalised form, which
    de-duplication compares and the engine requests), ``caption`` if ``caption_col`` is set, the
    additional columns, and the filter columns present in the input, with their input types.
    Unknown filter values (NULL, not a number) pass: the engine still checks the real images.

    ``url_list`` and ``output_path`` may be remote (``s3://...``, read and written through
    fsspec with ``storage_options``). A remote output is written locally first and uploaded as
    one object, which appears whole or not at all.
    """
    files = list_input_files(url_list, input_format, storage_options)
    # Read first: a missing or malformed list stops the plan before any input is scanned.
    blocklist = load_blocklist(settings.url_blocklist, storage_options) if settings.url_blocklist else None
    with contextlib.ExitStack() as stack:
        if con is None:
            con = stack.enter_context(planner_connection(files, settings, storage_options))
        return _filter_on(con, files, input_format, output_path, settings, storage_options, blocklist)


def _filter_on(
    con: duckdb.DuckDBPyConnection,
    files: list[str],
    input_format: str,
    output_path: str,
    settings: FilterSettings,
    storage_options: StorageOptions | None,
    blocklist: Blocklist | None,
) -> FilterReport:
    """:func:`filter_urls` on a given connection; its work tables are dropped after."""
    suffix = uuid.uuid4().hex[:12]
    base, verdict = f"__plan_base_{suffix}", f"__plan_verdict_{suffix}"
    entries, hosts = f"__plan_blocklist_{suffix}", f"__plan_blocked_hosts_{suffix}"
    try:
        return _filter(
            con,
            files,
            input_format,
            output_path,
            settings,
            base,
            verdict,
            storage_options,
            blocklist=(blocklist, entries, hosts) if blocklist is not None else None,
        )
    finally:
        for table in (base, verdict, entries, hosts):
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DROP TABLE IF EXISTS {table}")


def _filter(
    con: duckdb.DuckDBPyConnection,
    all_files: list[str],
    input_format: str,
    output_path: str,
    s: FilterSettings,
    base: str,
    verdict: str,
    storage_options: StorageOptions | None = None,
    blocklist: tuple[Blocklist, str, str] | None = None,
) -> FilterReport:
    # 0-byte files hold no rows (DuckDB would invent a column for them or call them corrupt).
    files = [f for f in all_files if not is_empty_file(f, storage_options)]
    if not files:
        raise InputError(
            f"input {', '.join(all_files[:3])}{' ...' if len(all_files) > 3 else ''} contains no rows"
        )
    columns_per_file = {f: input_columns(con, f, input_format, storage_options) for f in files}

    def require(name: str, what: str) -> None:
        for f, cols in columns_per_file.items():
            if _resolve(name, cols) is None:
                raise InputError(_missing_message(what, name, f, cols))

    def present(name: str) -> tuple[str | None, str]:
        """The column's spelling if every file has it, else (None, why not)."""
        lacking = [f for f, cols in columns_per_file.items() if _resolve(name, cols) is None]
        if not lacking:
            return _resolve(name, columns_per_file[files[0]]), ""
        shown = ", ".join(os.path.basename(f) for f in lacking[:3]) + (" ..." if len(lacking) > 3 else "")
        return None, f"column {name!r} not in {shown}"

    require(s.url_col, "url_col")
    if s.caption_col is not None:
        require(s.caption_col, "caption_col")
    own_names = ("url", "caption", FETCH_URL_COLUMN)
    additional = [c for c in dict.fromkeys(s.save_additional_columns) if c.lower() not in own_names]
    for c in additional:
        require(c, "save_additional_columns")

    # Filter columns: output under the file's spelling, unless already an additional column.
    taken = {*own_names, *(c.lower() for c in additional)}
    filter_cols: dict[str, str | None] = {}
    why_absent: dict[str, str] = {}
    for key, name in (
        ("width", s.width_col),
        ("height", s.height_col),
        ("similarity", s.similarity_col),
        ("punsafe", s.punsafe_col),
        ("pwatermark", s.pwatermark_col),
    ):
        filter_cols[key], why_absent[key] = present(name)
    extra_cols = [c for c in dict.fromkeys(v for v in filter_cols.values() if v) if c.lower() not in taken]

    url = sql_identifier(s.url_col)
    select = [
        f"CAST({url} AS VARCHAR) AS url",
        f"{_normalize_sql(url, http_only=True)} AS {FETCH_URL_COLUMN}",
    ]
    if s.caption_col is not None:
        select.append(f"CAST({sql_identifier(s.caption_col)} AS VARCHAR) AS caption")
    carried = additional + extra_cols
    out_columns = ["url", FETCH_URL_COLUMN] + (["caption"] if s.caption_col is not None else []) + carried

    def text_columns(f: str) -> list[str]:
        names = [s.url_col] + ([s.caption_col] if s.caption_col is not None else [])
        return [c for c in (_resolve(n, columns_per_file[f]) for n in names) if c is not None]

    sources = {
        f: open_source(con, f, input_format, text_columns=text_columns(f), storage_options=storage_options)
        for f in files
    }
    types = _common_types(con, sources, carried) if len(files) > 1 else {}
    select += [
        f"CAST({sql_identifier(c)} AS {types[c]}) AS {sql_identifier(c)}"
        if c in types
        else f"{sql_identifier(c)} AS {sql_identifier(c)}"
        for c in carried
    ]

    # File by file into one table: its rowid is then the input order (file order, row order),
    # which de-duplication ("first occurrence") and the output order rely on.
    for i, f in enumerate(files):
        query = f"SELECT {', '.join(select)} FROM {sources[f]}"
        try:
            con.execute(f"CREATE TEMP TABLE {base} AS {query}" if i == 0 else f"INSERT INTO {base} {query}")
        except duckdb.Error as e:
            raise InputError(f"cannot read {f}: {one_line(e)}") from e
        release_source(con, f)

    # Rules after invalid_url / duplicate, as (name, SQL condition that removes the row).
    rules: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}

    def num(key: str) -> str:
        return f"TRY_CAST({sql_identifier(filter_cols[key] or '')} AS DOUBLE)"

    if s.min_caption_length is not None:
        if s.caption_col is None:
            skipped["min_caption_length"] = "caption_col is not set"
        else:
            rules.append(
                (
                    "min_caption_length",
                    f"length(trim(coalesce(CAST(caption AS VARCHAR), ''))) < {int(s.min_caption_length)}",
                )
            )

    def threshold(rule: str, key: str, value: float | None, op: str) -> None:
        if value is None:
            return
        if filter_cols[key] is None:
            skipped[rule] = why_absent[key]
        else:
            rules.append((rule, f"{num(key)} {op} {_double(value)}"))

    threshold("min_width", "width", s.min_width, "<")
    threshold("min_height", "height", s.min_height, "<")
    if s.max_filter_aspect_ratio is not None:
        if filter_cols["width"] is None or filter_cols["height"] is None:
            skipped["max_filter_aspect_ratio"] = why_absent["width"] or why_absent["height"]
        else:
            w, h = num("width"), num("height")
            ratio = f"greatest({w}, {h}) / NULLIF(least({w}, {h}), 0)"
            rules.append(("max_filter_aspect_ratio", f"{ratio} > {_double(s.max_filter_aspect_ratio)}"))
    threshold("min_similarity", "similarity", s.min_similarity, "<")
    threshold("max_punsafe", "punsafe", s.max_punsafe, ">")
    threshold("max_pwatermark", "pwatermark", s.max_pwatermark, ">")
    authority = _authority_sql(FETCH_URL_COLUMN)
    for rule, domains, removes in (
        ("allowed_domains", s.allowed_domains, "NOT regexp_matches"),
        ("denied_domains", s.denied_domains, "regexp_matches"),
    ):
        if not domains:
            continue
        pattern = _domain_regex(domains)
        if pattern:
            rules.append((rule, f"{removes}({authority}, {sql_string(pattern)})"))
        else:
            skipped[rule] = "no usable domain given"
    if blocklist is not None:
        if len(blocklist[0]):
            rules.append(("url_blocklist", _blocklist_condition(con, base, *blocklist)))
        else:
            skipped["url_blocklist"] = f"{s.url_blocklist} holds no entries"

    # The first occurrence (in input order) of each valid normalised URL survives de-duplication;
    # the filters are evaluated once, on those rows only, and each row gets the number of the
    # first rule that removes it (-1: kept), so that the counts are sequential and exact.
    fetch = FETCH_URL_COLUMN
    rows_in, invalid = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {fetch} IS NULL) FROM {base}"
    ).fetchall()[0]
    if rows_in == 0:
        raise InputError(
            f"input {', '.join(all_files[:3])}{' ...' if len(all_files) > 3 else ''} contains no rows"
        )
    cases = " ".join(f"WHEN coalesce({cond}, false) THEN {i}" for i, (_, cond) in enumerate(rules))
    con.execute(
        f"CREATE TEMP TABLE {verdict} AS SELECT b.rowid AS r, CASE {cases} ELSE -1 END AS rule FROM {base} b "
        f"WHERE b.rowid IN (SELECT min(rowid) FROM {base} WHERE {fetch} IS NOT NULL GROUP BY {fetch})"
        if rules
        else f"CREATE TEMP TABLE {verdict} AS SELECT min(rowid) AS r, -1 AS rule FROM {base} "
        f"WHERE {fetch} IS NOT NULL GROUP BY {fetch}"
    )
    per_rule = dict(con.execute(f"SELECT rule, count(*) FROM {verdict} GROUP BY rule").fetchall())
    unique = sum(per_rule.values())
    removed = {"invalid_url": int(invalid), "duplicate": int(rows_in - invalid - unique)}
    removed.update((name, int(per_rule.get(i, 0))) for i, (name, _) in enumerate(rules))

    order = "b.rowid"
    if s.shuffle_seed is not None:
        # md5 rather than hash(): its value does not change between DuckDB versions, so a
        # re-plan after an upgrade gives the same shards (and resume stays valid).
        order = f"md5_number({sql_string(str(int(s.shuffle_seed)) + ':')} || b.{fetch}), b.rowid"
    projection = ", ".join(f"b.{sql_identifier(c)}" for c in out_columns)
    query = (
        f"SELECT {projection} FROM {base} b SEMI JOIN (SELECT r FROM {verdict} WHERE rule = -1) v "
        f"ON b.rowid = v.r ORDER BY {order}"
    )
    with staged_file(output_path, storage_options) as local:
        con.execute(f"COPY ({query}) TO {sql_string(local)} (FORMAT parquet, COMPRESSION zstd)")
        # Count per authority first (few distinct values), then fold authorities into hosts.
        top = con.execute(
            f"SELECT {_host_in_authority_sql('a')} AS host, sum(n) AS n FROM "
            f"(SELECT {_authority_sql(fetch)} AS a, count(*) AS n FROM read_parquet({sql_string(local)}) "
            f"GROUP BY a) GROUP BY host ORDER BY n DESC, host LIMIT {_TOP_DOMAINS}"
        ).fetchall()
    rows_out = rows_in - sum(removed.values())
    return FilterReport(
        rows_in=rows_in,
        removed=removed,
        skipped_rules=skipped,
        rows_out=rows_out,
        top_domains=[(h, int(n)) for h, n in top],
        columns=out_columns,
    )
