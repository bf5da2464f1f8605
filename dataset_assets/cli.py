"""``dataset-assets download``: an img2dataset command line, run by this engine.

Every img2dataset option name is accepted with its syntax (``--opt value``, ``--opt=value``,
``True``/``False`` booleans, JSON lists), so switching is a matter of the program name.
Options that make no sense here (wandb, Spark) are accepted and ignored with a notice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dataset_assets import catalogue
from dataset_assets.engine import DownloadOptions, OptionError
from dataset_assets.engine.download import download
from dataset_assets.io.sources import InputError, one_line

# img2dataset options without an effect here; accepted so existing command lines run.
IGNORED_OPTIONS = {
    "enable_wandb": "wandb logging is not supported; the stats json files hold the same figures",
    "wandb_project": "wandb logging is not supported",
    "distributor": "this CLI runs one machine; scale out with the Dagster assets instead",
    "subjob_size": "only used by img2dataset's Spark distributor",
    "max_shard_retry": "shards are resumable: re-run the same command to retry unfinished shards",
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n", "none"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _parse_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [v.strip(" '\"") for v in text.strip("[]").split(",")]
        return [str(v) for v in value]
    return [v.strip() for v in text.split(",") if v.strip()]


def _parse_optional_str(text: str) -> str | None:
    return None if text.strip().lower() in ("none", "null", "") else text


def _parse_optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("inf", "none", "null", "") else float(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "null", "") else int(text)


def _converter(entry: catalogue.Entry) -> Any:
    """argparse type for an option, derived from its declared annotation."""
    declared = entry.declared
    hint = declared.base_type
    if typing.get_origin(hint) is tuple:
        return _parse_list
    if declared.optional:
        return {str: _parse_optional_str, float: _parse_optional_float, int: _parse_optional_int}[hint]
    return {bool: _parse_bool, float: float, int: int, str: str}[hint]


def _help(entry: catalogue.Entry) -> str:
    """Description, default and allowed values; argparse's %-formatting is escaped."""
    parts = [entry.help]
    allowed = catalogue.allowed(entry)
    if allowed:
        parts.append(f"Allowed: {allowed}.")
    if not entry.declared.required or entry.default("cli") is not dataclasses.MISSING:
        parts.append(f"Default: {catalogue.format_value(entry.default('cli'))}.")
    return " ".join(parts).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataset-assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download_cmd = commands.add_parser("download", help="download a URL list into image shards")
    for entry in catalogue.options():
        if not entry.on_cli:
            continue
        kind = _converter(entry)
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind is _parse_bool else {}
        if entry.default("cli") is dataclasses.MISSING:
            extra["required"] = True
        # An option not given is absent from the namespace, so that a given "None"
        # (``--compute_hash None``) is told apart from "not given" (the default).
        download_cmd.add_argument(
            f"--{entry.name}",
            type=kind,
            default=argparse.SUPPRESS,
            help=_help(entry),
            metavar=_metavar(entry),
            **extra,
        )
    for name, why in IGNORED_OPTIONS.items():
        download_cmd.add_argument(f"--{name}", default=None, help=f"ignored: {why}")
    download_cmd.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def _metavar(entry: catalogue.Entry) -> str:
    hint = entry.declared.base_type
    if typing.get_origin(hint) is tuple:
        return "LIST"
    return {bool: "BOOL", float: "NUMBER", int: "INT"}.get(hint, "TEXT")


def options_from_args(args: argparse.Namespace) -> DownloadOptions:
    values = {name: getattr(args, name) for name in DownloadOptions.field_names() if hasattr(args, name)}
    if values.get("incremental_mode") == "extend":
        raise OptionError("incremental_mode=extend is not supported: use a new output_folder")
    return DownloadOptions.from_mapping(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, why in IGNORED_OPTIONS.items():
        if getattr(args, name, None) is not None:
            print(f"note: --{name} ignored: {why}", file=sys.stderr)
    try:
        options = options_from_args(args)
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _note_txt_columns(args, options)
    started = time.monotonic()
    default_folder = catalogue.by_name()["output_folder"].default("cli")
    output_folder = getattr(args, "output_folder", None) or default_folder
    try:
        summary = download(args.url_list, output_folder, options, progress=not args.no_progress)
    except InputError as error:
        # Bad input is the user's to fix, not a bug: one line naming the file, no traceback.
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    _print_summary(summary, elapsed)
    return 0


def _note_txt_columns(args: argparse.Namespace, options: DownloadOptions) -> None:
    """Say which given options a txt URL list makes moot (img2dataset ignores them silently)."""
    if not options.input_format.startswith("txt"):
        return
    for name in ("caption_col", "save_additional_columns"):
        if getattr(args, name, None):
            print(f"note: --{name} ignored: a {options.input_format} URL list has only URLs", file=sys.stderr)


def _print_summary(all_stats: list[Any], elapsed: float) -> None:
    done = [s for s in all_stats if not s.skipped]
    count = sum(s.count for s in done)
    successes = sum(s.successes for s in done)
    statuses: Counter[str] = Counter()
    for stats in done:
        statuses.update(stats.status_dict)
    print(
        f"{len(done)} shard(s) downloaded, {len(all_stats) - len(done)} already complete; "
        f"{successes}/{count} images ({(successes / count if count else 0):.1%}) "
        f"in {elapsed:.1f}s = {count / elapsed if elapsed else 0:.1f} rows/s"
    )
    failures = [(msg, n) for msg, n in statuses.most_common() if msg != "success"]
    for message, number in failures[:10]:
        print(f"  {number:>7}  {message}")


if __name__ == "__main__":
    sys.exit(main())
