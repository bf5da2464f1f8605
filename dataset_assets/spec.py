"""The dataset spec: one YAML file describing a dataset, with errors that name the key.

The spec's keys are the CLI's (img2dataset's) option names plus the URL-list filter settings,
so one file describes a dataset for both ``dataset-assets download`` and the Dagster assets.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import types
import typing
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import Field

from dataset_assets import catalogue
from dataset_assets.engine import DownloadOptions, OptionError
from dataset_assets.io.storage import filesystem, is_remote_url
from dataset_assets.planning import FilterSettings
from dataset_assets.schema.option import problem

SHARDS_PER_RUN = catalogue.SHARDS_PER_RUN

# The demo's template (``python -m dataset_assets.demo`` fills in its paths); never a fallback.
DEMO_SPEC_TEMPLATE = Path(__file__).parent / "demo" / "demo_spec.yaml"
SPEC_ENV = "DATASET_SPEC"
# Where `python -m dataset_assets.demo` writes by default, relative to where it is started.
DEMO_OUTPUT = "demo_output"


class SpecError(ValueError):
    """The spec is unusable; the message names the source and the key."""


def _pydantic_annotation(annotation: Any) -> Any:
    """YAML and Dagster config speak lists where the blocks store tuples."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple:
        return list[str]
    if origin in (typing.Union, types.UnionType):
        inner = [_pydantic_annotation(a) for a in args]
        result = inner[0]
        for item in inner[1:]:
            result = result | item
        return result
    return annotation


def _spec_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class _SpecMethods(pydantic.BaseModel):
    """What a spec knows beyond its keys: derived paths and the blocks' settings."""

    model_config = pydantic.ConfigDict(extra="forbid")

    @property
    def plan_root(self) -> str:
        return self.plan_folder or posixpath.join(self.output_folder, "_plan")  # type: ignore[attr-defined]

    @property
    def filtered_urls_path(self) -> str:
        return posixpath.join(self.plan_root, "filtered_urls.parquet")

    @property
    def shard_inputs_folder(self) -> str:
        return posixpath.join(self.plan_root, "shards")

    def download_options(self) -> DownloadOptions:
        """The engine's options; raises OptionError naming the bad key."""
        values = {name: getattr(self, name) for name in DownloadOptions.field_names()}
        # The Dagster path always reads the planner's parquet shard inputs (url, caption, ...);
        # input_format and url_col describe the URL list, which the planner reads.
        values["input_format"] = "parquet"
        values["url_col"] = "url"
        return DownloadOptions(**values)

    def filter_settings(self) -> FilterSettings:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(FilterSettings)}
        values["save_additional_columns"] = tuple(dict.fromkeys(self._carried_columns()))
        return FilterSettings(**values)

    def _carried_columns(self) -> list[str]:
        """Input columns the shard inputs must keep: extra metadata, boxes, expected hashes."""
        columns = list(self.save_additional_columns)  # type: ignore[attr-defined]
        if self.bbox_col:  # type: ignore[attr-defined]
            columns.append(self.bbox_col)  # type: ignore[attr-defined]
        if self.verify_hash:  # type: ignore[attr-defined]
            columns.append(self.verify_hash[0])  # type: ignore[attr-defined]
        return columns


def _spec_model() -> type[_SpecMethods]:
    fields: dict[str, Any] = {}
    for entry in catalogue.options():
        default = entry.default("spec")
        annotation = _pydantic_annotation(entry.declared.annotation)
        if default is dataclasses.MISSING:
            fields[entry.name] = (annotation, Field(description=entry.help))
        else:
            fields[entry.name] = (annotation, Field(default=_spec_value(default), description=entry.help))
    return pydantic.create_model(  # type: ignore[call-overload, no-any-return]
        "DatasetSpec",
        __base__=_SpecMethods,
        __doc__="Where the URLs come from, where the dataset goes, and how it is built: one key per option.",
        __module__=__name__,
        **fields,
    )


# One field per option of the catalogue, with the spec's default and the option's description.
DatasetSpec = _spec_model()


def demo_hint(cwd: Path | None = None) -> str:
    """How to open the demo's runs instead: both variables, since ``dagster dev`` without
    ``DAGSTER_HOME`` uses a temporary, empty instance (no runs, no partitions)."""
    root = (cwd or Path.cwd()) / DEMO_OUTPUT
    if (root / "spec.yaml").is_file():
        where = f"The demo's output is in {root}: open its runs with"
        home, spec = root / "dagster_home", root / "spec.yaml"
    else:
        where = "For the demo, run `python -m dataset_assets.demo` from the project root, then"
        home, spec = Path("$PWD") / DEMO_OUTPUT / "dagster_home", Path(DEMO_OUTPUT) / "spec.yaml"
    return (
        f"{where} `DAGSTER_HOME={home} {SPEC_ENV}={spec} dagster dev -m dataset_assets.definitions "
        "-h 127.0.0.1`, or run `python -m dataset_assets.demo --ui`"
    )


def spec_path() -> str | Path:
    """The spec file named by ``DATASET_SPEC``; unset is an error, never a silent default (a
    forgotten variable must not quietly build the demo, with private addresses allowed). The
    error is what the UI shows for the code location, so it says what to set, both variables."""
    value = os.environ.get(SPEC_ENV, "").strip()
    if not value:
        raise SpecError(
            f"{SPEC_ENV} is not set, so no dataset is loaded: name your dataset's spec file (e.g. "
            f"{SPEC_ENV}=my_spec.yaml, or an s3:// URL) and set DAGSTER_HOME to a persistent folder "
            "(without it `dagster dev` shows a temporary, empty instance). " + demo_hint()
        )
    if is_remote_url(value):
        return value
    return Path(value)


def _read_text(path: str | Path) -> str:
    """A local file, or a remote one (``DATASET_SPEC=s3://bucket/specs/laion.yaml``, read with the
    standard AWS environment / credential chain), so cluster run workers need no mounted file."""
    if isinstance(path, str) and is_remote_url(path):
        fs, inner = filesystem(path)
        with fs.open(inner, "rb") as handle:
            return handle.read().decode()
    return Path(path).read_text()


def load_spec(path: str | Path | None = None) -> Any:
    if path is None:
        path = spec_path()
    try:
        raw = yaml.safe_load(_read_text(path)) or {}
    except OSError as error:
        raise SpecError(f"cannot read dataset spec {path}: {error}") from error
    except yaml.YAMLError as error:
        raise SpecError(f"dataset spec {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"dataset spec {path} must be a mapping of option names to values")
    return spec_from_mapping(raw, source=str(path))


def spec_from_mapping(values: dict[str, Any], source: str = "dataset spec") -> Any:
    unknown = sorted(set(values) - set(DatasetSpec.model_fields))
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {', '.join(unknown)}")
    try:
        spec = DatasetSpec(**values)
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise SpecError(f"{source}: {problems}") from None
    validate_spec(spec, source)
    return spec


def validate_spec(spec: _SpecMethods, source: str = "dataset spec") -> None:
    """Check every key against its declaration (choices, bounds), then the rules between keys;
    raises SpecError naming the key and what is allowed."""
    for entry in catalogue.options():
        message = problem(entry.declared, getattr(spec, entry.name))
        if message:
            raise SpecError(f"{source}: {message}")
    try:
        spec.download_options()
        spec.filter_settings()
    except OptionError as error:
        raise SpecError(f"{source}: {error}") from None
