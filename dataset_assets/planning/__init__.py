"""URL planning before any download: normalise, de-duplicate, filter, then cut into shard inputs.

Everything runs as DuckDB SQL over the input files (no per-row Python), so a 10 M row list is
planned in seconds with bounded memory. Like the engine, this package must not import dagster.
"""

from dataset_assets.planning.sharding import read_manifest, write_shard_inputs
from dataset_assets.planning.urls import FilterReport, FilterSettings, filter_urls, normalize_url_sql

__all__ = [
    "FilterReport",
    "FilterSettings",
    "filter_urls",
    "normalize_url_sql",
    "read_manifest",
    "write_shard_inputs",
]
