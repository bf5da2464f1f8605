"""The shard engine: read URL lists, fetch, decode/resize/encode, write img2dataset-compatible shards.

A plain library: nothing under this package imports Dagster, so it can be tested and
benchmarked on its own and driven by the CLI, the Dagster assets, or a notebook alike.
"""

from dataset_assets.engine.options import DownloadOptions, OptionError

__all__ = ["DownloadOptions", "OptionError"]
