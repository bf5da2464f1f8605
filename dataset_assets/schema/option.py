"""How an option is declared: once, on the dataclass field of the block that uses it.

An option's name, type and default are the field's; its description, allowed values, bounds and
whether it is fixed per dataset ride along in the field's metadata. Everything a
user sees of an option (the spec model, the ``dataset`` resource, ``--help``, README's table) is
derived from these declarations by :mod:`dataset_assets.catalogue`, and one generic check
validates values against them, so an allowed value or a bound is written in exactly one place.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "dataset_assets.option"
_MISSING: Any = dataclasses.MISSING


class OptionError(ValueError):
    """A user-facing configuration error; the message always names the offending option."""


@dataclass(frozen=True)
class OptionInfo:
    """What an option means, beside its name, type and default (which are the field's)."""

    help: str
    # The allowed values, or a function that names them (see ``choices``).
    allowed: tuple[Any, ...] | Callable[[], Sequence[Any]] | None = None
    # Inclusive/exclusive bounds for numbers; None = unbounded on that side.
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    # Fixed per dataset: read from the spec file only, never overridden per run (layout keys
    # decide file names and bytes on disk; a run that changed them would mix two datasets).
    fixed: bool = False
    # Readers beyond the declaring block (README's "used by" column).
    also_used_by: tuple[str, ...] = ()
    # Where the option is declared (set by describe()).
    owner: str = ""

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The allowed values. A function is asked only when they are needed, so that declaring
        an option does not import what implements its values: the output formats' writers pull
        in pyarrow, and a download worker, which unpickles the options, never writes a shard."""
        if callable(self.allowed):
            return tuple(self.allowed())
        return self.allowed


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    fixed: bool = False,
    also_used_by: Sequence[str] = (),
    default_factory: Any = _MISSING,
) -> Any:
    """A dataclass field that carries the option's description and constraints."""
    if not help:
        raise TypeError("every option needs a one-line help text")
    allowed = choices if choices is None or callable(choices) else tuple(choices)
    info = OptionInfo(help, allowed, ge, gt, le, fixed, tuple(also_used_by))
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: info})


def shared(owner: type, name: str) -> Any:
    """A field that re-uses another block's declaration (same default, same meaning).

    The planner reads the URL list's columns that the engine also reads; the option is still
    declared once, on the engine, and both blocks take it from there.
    """
    source = next(f for f in dataclasses.fields(owner) if f.name == name)
    metadata = {_KEY: source.metadata[_KEY], "shared_from": owner}
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)


@dataclass(frozen=True)
class Declared:
    """One option as the catalogue sees it."""

    name: str
    annotation: Any
    default: Any  # dataclasses.MISSING when required
    info: OptionInfo
    owner: type

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def base_type(self) -> Any:
        """The annotation without ``| None``."""
        args = [a for a in typing.get_args(self.annotation) if a is not type(None)]
        if typing.get_origin(self.annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            return args[0]
        return self.annotation

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.annotation)


def describe(block: type, *, include_shared: bool = False) -> list[Declared]:
    """The options a dataclass declares, in field order (shared ones only when asked)."""
    hints = typing.get_type_hints(block)
    declared = []
    for f in dataclasses.fields(block):
        info = f.metadata.get(_KEY)
        if info is None:
            continue
        owner = f.metadata.get("shared_from", block)
        if owner is not block and not include_shared:
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        declared.append(Declared(f.name, hints[f.name], default, info, owner))
    return declared


def problem(option: Declared, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``option`` (a one-line message naming it), or None."""
    name, info = option.name, option.info
    if value is None:
        return None if option.optional or option.required else f"{name} may not be empty"
    choices = info.choices
    if choices is not None:
        values = value if isinstance(value, list | tuple) and option.base_type is not str else [value]
        for item in values:
            if item not in choices:
                allowed = ", ".join(str(c) for c in choices)
                return f"{name}={item!r} is not one of {allowed}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return f"{name} must be a number, got nan"
        if info.gt is not None and not value > info.gt:
            return f"{name} must be > {_number(info.gt)}, got {value!r}"
        if info.ge is not None and not value >= info.ge:
            return f"{name} must be >= {_number(info.ge)}, got {value!r}"
        if info.le is not None and not value <= info.le:
            return f"{name} must be <= {_number(info.le)}, got {value!r}"
    return None


def check(instance: Any) -> None:
    """Validate every declared option of a dataclass instance; raises OptionError."""
    for declared in describe(type(instance), include_shared=True):
        message = problem(declared, getattr(instance, declared.name))
        if message:
            raise OptionError(message)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
