"""Loading the dataset spec YAML, with errors that name the offending key.

The spec's keys are the CLI's (img2dataset's) option names plus the filter settings, so one
file describes a dataset for both ``dataset-assets download`` and the Dagster assets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import yaml

from dataset_assets.engine import OptionError
from dataset_assets.resources import DatasetSpec

DEFAULT_SPEC = Path(__file__).parent / "demo" / "demo_spec.yaml"
SPEC_ENV = "DATASET_SPEC"


class SpecError(ValueError):
    """The spec file is unusable; the message names the file and the key."""


def spec_path() -> Path:
    return Path(os.environ.get(SPEC_ENV) or DEFAULT_SPEC)


def load_spec(path: str | Path | None = None) -> DatasetSpec:
    path = Path(path) if path is not None else spec_path()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SpecError(f"cannot read dataset spec {path}: {error}") from error
    except yaml.YAMLError as error:
        raise SpecError(f"dataset spec {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"dataset spec {path} must be a mapping of option names to values")
    return spec_from_mapping(raw, source=str(path))


def spec_from_mapping(values: dict[str, Any], source: str = "dataset spec") -> DatasetSpec:
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


def validate_spec(spec: DatasetSpec, source: str = "dataset spec") -> None:
    """Check the values the engine will see (choices, ranges); raises SpecError naming the key."""
    try:
        spec.download_options()
    except OptionError as error:
        raise SpecError(f"{source}: {error}") from None
