"""The engine, the planner and the reporting code are plain libraries: no Dagster inside."""

from __future__ import annotations

import pickle
import subprocess
import sys

from dataset_assets.engine.options import DownloadOptions

PLAIN_PACKAGES = [
    "dataset_assets.engine",
    "dataset_assets.planning",
    "dataset_assets.reporting",
    "dataset_assets.cli",
    "dataset_assets.catalogue",
    "dataset_assets.schema",
    "dataset_assets.io",
]


def test_plain_packages_import_without_dagster() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {PLAIN_PACKAGES!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(getattr(module, '__path__', []), name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"Dagster was imported: {done.stdout} {done.stderr[-2000:]}"


def test_a_download_worker_imports_no_writer_or_reader_libraries() -> None:
    # A worker fetches and processes images; the parent reads the list and writes the shards.
    # pyarrow, DuckDB and fsspec would cost every worker process ~50 MB and 0.16 s for nothing.
    # A worker gets its options pickled, as here (unpickling does not validate them again).
    options = pickle.dumps(DownloadOptions(output_format="parquet", input_format="parquet"))
    code = (
        "import pickle, sys\n"
        "import dataset_assets.engine.worker\n"
        "options = pickle.loads(sys.stdin.buffer.read())\n"
        "assert options.output_format == 'parquet'\n"
        "heavy = ('pyarrow', 'duckdb', 'fsspec', 'dagster')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=options, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:].decode()
    assert done.stdout.decode().strip() == "[]", f"a worker imported {done.stdout.decode().strip()}"
