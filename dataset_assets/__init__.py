"""dataset_assets: image datasets from URL lists, as Dagster software-defined assets.

The download engine lives in :mod:`dataset_assets.engine` and imports nothing from Dagster.
"""

__version__ = "0.1.0"
