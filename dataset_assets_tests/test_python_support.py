"""The declared Python floor covers the standard library the package uses.

Why: ``requires-python`` once said 3.10 while the fetcher used ``asyncio.timeout`` (3.11), so on
3.10 every row became an internal error. Only one interpreter runs here, so instead of running
on the floor this scans the package for standard-library names newer than some release and
checks the declaration excludes every release without them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dataset_assets"

# Standard-library names the package might use, with the release that added them. Extend it
# when a newer one comes into use; the floor test below then asks for the matching declaration.
ADDED_IN: dict[str, tuple[int, int]] = {
    r"\basyncio\.timeout\(": (3, 11),
    r"\basyncio\.TaskGroup\b": (3, 11),
    r"\basyncio\.Runner\b": (3, 11),
    r"^\s*import tomllib\b": (3, 11),
    r"\b(dt|datetime)\.UTC\b": (3, 11),
    r"\bExceptionGroup\b": (3, 11),
    r"\bitertools\.batched\b": (3, 12),
    r"\btyping\.override\b|\bfrom typing import [^\n]*\boverride\b": (3, 12),
}


def _declared() -> SpecifierSet:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return SpecifierSet(project["requires-python"])


def _uses() -> dict[str, list[str]]:
    """Each pattern of ADDED_IN that occurs in the package, with the files it occurs in."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in ADDED_IN:
            if re.search(pattern, text, re.MULTILINE):
                found.setdefault(pattern, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_fetcher_still_relies_on_asyncio_timeout() -> None:
    # Keeps the scan honest: the API that caused the bug must be found by it.
    assert "dataset_assets/engine/fetch.py" in _uses()[r"\basyncio\.timeout\("]


def test_requires_python_excludes_every_release_missing_an_api_we_use() -> None:
    declared = _declared()
    uses = _uses()
    floor = max(ADDED_IN[pattern] for pattern in uses)
    assert floor >= (3, 11)
    major, minor = floor
    assert f"{major}.{minor}" in declared, f"requires-python {declared} refuses {major}.{minor}"
    older = f"{major}.{minor - 1}"
    assert older not in declared, f"requires-python {declared} admits {older}, which lacks what " + ", ".join(
        f"{files[0]} uses ({p})" for p, files in uses.items() if ADDED_IN[p] == floor
    )


def test_tools_target_the_declared_floor() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    target = tool["ruff"]["target-version"]  # e.g. py311
    assert f"{target[2]}.{target[3:]}" in _declared()
    assert f"{target[2]}.{int(target[3:]) - 1}" not in _declared(), "ruff targets an older Python"
