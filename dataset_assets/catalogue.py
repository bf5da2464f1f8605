"""Every option of the project in one table, gathered from the blocks that declare them.

A block is a dataclass whose fields are options (:func:`dataset_assets.schema.option.option`):
the engine's :class:`DownloadOptions`, the planner's :class:`FilterSettings`, and
:class:`DatasetSettings` below (where a dataset lives and how its runs are cut and judged).
The spec model, the ``dataset`` resource, ``dataset-assets download --help`` and README's option
table are all derived from :func:`options`; the only place where a surface's default differs
from the declaration is :data:`SURFACE_DEFAULTS`, each with its reason.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.planning.urls import FilterSettings
from dataset_assets.schema.option import Declared, describe, option

# Shards a backfill puts in one run, by default. A run pays Dagster's start-up (~2 s) and the
# worker pool's once, so more shards per run cost less; fewer give finer retries and more runs
# to spread over machines. 8 keeps the fixed cost near 2 % of a 10 000-row shard even on
# loopback, and a failed run leaves at most 8 shards to finish.
SHARDS_PER_RUN = 8


@dataclass(frozen=True)
class DatasetSettings:
    """Where the dataset comes from and goes, how backfills cut it into runs, how it is judged."""

    url_list: str = option(
        help="URL list file or folder (any input_format); a local path or fsspec URL.",
        fixed=True,
        also_used_by=("planner", "engine"),
    )
    output_folder: str = option(
        help="Dataset output folder: a local path or an fsspec URL such as s3://bucket/prefix.",
        fixed=True,
        also_used_by=("engine", "verification", "card"),
    )
    plan_folder: str | None = option(
        None,
        "Filtered URLs and shard inputs (local or s3://); none = {output_folder}/_plan.",
        fixed=True,
        also_used_by=("planner",),
    )
    shards_per_run: int = option(
        SHARDS_PER_RUN,
        "Shards one backfill run downloads with one worker pool (image_shards' BackfillPolicy).",
        ge=1,
        fixed=True,
    )
    success_rate_floor: float = option(
        0.5,
        "Success rate below which dataset_verification's check and each shard's gate fail.",
        ge=0,
        le=1,
        also_used_by=("verification",),
    )
    verify_full_checksums: bool = option(
        False,
        "dataset_verification hashes every shard file (O(dataset bytes) of I/O) instead of a sample.",
        also_used_by=("verification",),
    )
    card_title: str = option(
        "Image dataset", "Title of DATASET_CARD.md (its front matter's pretty_name).", also_used_by=("card",)
    )
    card_license: str = option(
        "other",
        "The card's licence id (Hugging Face `license`, SPDX-like, e.g. cc-by-4.0); other = each "
        "image keeps its source's licence.",
        also_used_by=("card",),
    )
    card_task_categories: tuple[str, ...] = option(
        ("text-to-image", "image-to-text"),
        "The card's Hugging Face task_categories.",
        also_used_by=("card",),
    )
    card_tags: tuple[str, ...] = option((), "The card's Hugging Face tags.", also_used_by=("card",))
    card_contact: str | None = option(
        None,
        "Who answers questions and removal requests about the dataset (an e-mail or URL), on the card.",
        also_used_by=("card",),
    )


# Which code reads each block's options.
USED_BY = {DatasetSettings: "assets", DownloadOptions: "engine", FilterSettings: "planner"}
BLOCKS = tuple(USED_BY)
# The CLI runs the engine on a URL list: these options, and the engine's, are its flags.
CLI_SETTINGS = ("url_list", "output_folder")

# The deliberate differences between a surface's default and the declared one.
SURFACE_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "cli": {
        "output_folder": ("images", "img2dataset's default, so its command lines run unchanged"),
    },
    "spec": {
        "output_format": (
            "webdataset",
            "the CLI keeps img2dataset's files; a Dagster dataset is for training, "
            "and tars are what loaders read",
        ),
        "processes_count": (
            2,
            "the CLI keeps img2dataset's 1; a code location is meant to use the machine",
        ),
    },
}


@dataclass(frozen=True)
class Entry:
    """One option of the catalogue, with its defaults on each surface."""

    declared: Declared
    used_by: tuple[str, ...]
    on_cli: bool

    @property
    def name(self) -> str:
        return self.declared.name

    @property
    def help(self) -> str:
        return self.declared.info.help

    @property
    def fixed(self) -> bool:
        return self.declared.info.fixed

    def default(self, surface: str) -> Any:
        """The default on ``surface`` ("cli" or "spec"); dataclasses.MISSING when required."""
        override = SURFACE_DEFAULTS.get(surface, {}).get(self.name)
        return override[0] if override else self.declared.default


@functools.cache
def options() -> tuple[Entry, ...]:
    """All options, each once, in the order README lists them (static: built once a process;
    every spec load and resource asks for it)."""
    sharers: dict[str, list[str]] = {}
    for block in BLOCKS:
        for declared in describe(block, include_shared=True):
            sharers.setdefault(declared.name, []).append(USED_BY[block])
    entries = []
    for block in BLOCKS:
        for declared in describe(block):
            on_cli = block is DownloadOptions or declared.name in CLI_SETTINGS
            users = dict.fromkeys([*sharers[declared.name], *declared.info.also_used_by])
            entries.append(Entry(declared, tuple(users), on_cli))
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"options declared twice: {', '.join(duplicates)}")
    return tuple(entries)


@functools.cache
def _index() -> dict[str, Entry]:
    return {entry.name: entry for entry in options()}


def by_name() -> Mapping[str, Entry]:
    return MappingProxyType(_index())


def format_value(value: Any) -> str:
    """A default or choice as README and ``--help`` show it."""
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ", ".join(format_value(v) for v in value) if value else "none"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"{value} ({value // (1024 * 1024)} MiB)"
    return str(value)


def allowed(entry: Entry) -> str:
    info = entry.declared.info
    if info.choices is not None:
        return ", ".join(format_value(c) for c in info.choices)
    bounds = []
    for symbol, bound in ((">=", info.ge), (">", info.gt), ("<=", info.le)):
        if bound is not None:
            bounds.append(f"{symbol} {format_value(int(bound) if float(bound).is_integer() else bound)}")
    return " and ".join(bounds)


def markdown_table(entries: Iterable[Entry] | None = None) -> str:
    """README's option table (a test keeps README equal to it)."""
    rows = [
        "| option | CLI default | spec default | allowed | used by | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries if entries is not None else options():
        cli = f"`{format_value(entry.default('cli'))}`" if entry.on_cli else "not a flag"
        spec = f"`{format_value(entry.default('spec'))}`"
        marks = " (fixed per dataset)" if entry.fixed else ""
        rows.append(
            f"| `{entry.name}` | {cli} | {spec} | {allowed(entry)} | {', '.join(entry.used_by)}{marks} "
            f"| {entry.help.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def differences_table() -> str:
    """README's table of the deliberate differences between CLI and spec defaults."""
    rows = ["| option | declared | surface | default there | why |", "|---|---|---|---|---|"]
    entries = by_name()
    for surface, overrides in SURFACE_DEFAULTS.items():
        for name, (value, why) in overrides.items():
            declared = format_value(entries[name].declared.default)
            rows.append(f"| `{name}` | `{declared}` | {surface} | `{format_value(value)}` | {why} |")
    return "\n".join(rows) + "\n"


README_START = "<!-- options table: generated by `python -m dataset_assets.catalogue README.md` -->"
README_END = "<!-- end of options table -->"


def readme_section() -> str:
    """The generated part of README's Options section, markers included."""
    return (
        f"{README_START}\n\n{markdown_table()}\nDeliberate differences between the declared default and a "
        f"surface's:\n\n{differences_table()}\n{README_END}"
    )


def rewrite_readme(path: str) -> bool:
    """Replace the generated section of README; True when it changed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    updated = text[:start] + readme_section() + text[end:]
    if updated != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(updated)
    return updated != text


if __name__ == "__main__":
    import sys

    for readme in sys.argv[1:] or ["README.md"]:
        print(f"{readme}: {'rewritten' if rewrite_readme(readme) else 'already up to date'}")
