"""Dataset-level verification and the dataset card: plain code, no Dagster imports."""
