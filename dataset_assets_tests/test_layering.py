"""The engine, the planner and the reporting code are plain libraries: no Dagster inside."""

from __future__ import annotations

import subprocess
import sys

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
