"""The card's Sample schema section: every parquet column and per-sample json field, typed.

Why derived: the columns are declared once, in :mod:`dataset_assets.engine.shards.layout`, and
the shard writer builds its parquet schema from that declaration; the card asks the same
function, so a column added to the writer appears on the card without anyone editing a list.
Only the types of the columns copied from the URL list are not the code's: they are the input's,
read from a written shard's parquet footer when there is one.
"""

from __future__ import annotations

import pyarrow as pa

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.shards.layout import column_doc, image_column, metadata_schema, parquet_schema
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.reporting.markdown import code_span, inert

EXAMPLE_SHARD = "00000"


def _json_type(arrow: pa.DataType) -> str:
    """How the per-sample json writes a value of this arrow type (None as null)."""
    if pa.types.is_null(arrow):
        return "as in the URL list"
    if pa.types.is_boolean(arrow):
        return "boolean"
    if pa.types.is_integer(arrow) or pa.types.is_floating(arrow) or pa.types.is_decimal(arrow):
        return "number"
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow):
        return "array"
    if pa.types.is_struct(arrow) or pa.types.is_map(arrow):
        return "object"
    return "string"


def _input_schema(options: DownloadOptions, written: pa.Schema | None) -> pa.Schema:
    """The URL list's columns the shards copy: typed as a written shard has them, else untyped."""
    fields = []
    for name in options.save_additional_columns:
        index = written.get_field_index(name) if written is not None else -1
        fields.append(written.field(name) if index >= 0 else pa.field(name, pa.null()))
    return pa.schema(fields)


def _members(options: DownloadOptions) -> str:
    """Where a stored sample's image, caption and json live in this output format."""
    fmt = shard_format(options.output_format)
    ext = options.encode_format
    container = fmt.container(EXAMPLE_SHARD)
    caption = " and `{key}.txt` (the caption)" if options.caption_col else ""
    if fmt.name == "tfrecord":
        txt = ", `txt` (the caption)" if options.caption_col else ""
        return (
            f"Each stored image is one `tf.train.Example` in `{container}`: features `key`, "
            f"`{ext}` (the image){txt} and the json fields below."
        )
    if fmt.images_in_parquet:
        return (
            f"Each row's image is in the `{image_column(options, True)}` column of `{EXAMPLE_SHARD}.parquet`."
        )
    if container is None:
        return "This format stores no images (output_format dummy): only the stats and parquet."
    kind = "folder" if container == EXAMPLE_SHARD else "file"
    return (
        f"Each stored image is `{{key}}.{ext}` in the shard's {kind} (`{container}` for shard "
        f"{EXAMPLE_SHARD}), with `{{key}}.json` (the json fields below){caption}."
    )


def schema_section(options: DownloadOptions, written: pa.Schema | None) -> list[str]:
    """Markdown lines of the section; ``written``: a shard parquet's schema, when one is readable."""
    fmt = shard_format(options.output_format)
    inputs = _input_schema(options, written)
    json_fields = set(metadata_schema(options, inputs).names) if fmt.container(EXAMPLE_SHARD) else set()
    declared = parquet_schema(options, inputs, fmt.images_in_parquet)
    lines = [
        "## Sample schema",
        "",
        _members(options),
        (
            f"Every input row, stored or not, is a row of the shard's parquet (`{EXAMPLE_SHARD}.parquet`)."
            if fmt.writes_parquet
            else "No parquet is written in this format."
        ),
        "",
        "| field | parquet type | json type | in parquet | in json | holds |",
        "|---|---|---|---|---|---|",
    ]
    for column in declared:
        arrow = "as in the URL list" if pa.types.is_null(column.type) else str(column.type)
        in_json = column.name in json_fields
        lines.append(
            f"| {code_span(column.name)} | {arrow} | {_json_type(column.type) if in_json else ''} "
            f"| {'yes' if fmt.writes_parquet else 'no'} | {'yes' if in_json else 'no'} "
            f"| {column_doc(options, column.name)} |"
        )
    lines += ["", "Any field may be null where the row has no value (e.g. the sizes of a failed row).", ""]
    if written is not None and written.names != declared.names:
        lines += [
            f"Note: a written shard's parquet has the columns {', '.join(map(inert, written.names))}, "
            "not the ones above: it was written by another version or with other options.",
            "",
        ]
    return lines
