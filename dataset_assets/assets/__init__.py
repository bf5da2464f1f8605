"""Software-defined assets, one module per pipeline stage (ingest, download, verify, card)."""
