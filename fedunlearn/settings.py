"""Typed settings: the one toolkit every part (data set, partitioner, model, strategy, ...) and the
experiment schema use to turn TOML tables into validated dataclasses.

A part declares its settings as a dataclass whose fields carry their types and defaults; an
optional ``validate()`` method checks ranges with :func:`require`. :func:`build_settings` coerces a
raw table to that dataclass and re-raises every problem as :class:`ConfigError` with the full
dotted path, so the user sees one line naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field and the fix."""


class SettingError(ValueError):
    """Raised by a settings dataclass's ``validate()``: ``key`` is relative to the part's table."""

    def __init__(self, key: str, fix: str) -> None:
        super().__init__(f"{key}: {fix}")
        self.key, self.fix = key, fix


def require(ok: bool, key: str, fix: str) -> None:
    """Raise :class:`SettingError` for ``key`` with ``fix`` unless ``ok``."""
    if not ok:
        raise SettingError(key, fix)


@dataclass
class NoSettings:
    """The settings of a part that has none."""


PARTS = "parts"  # dataclass field metadata: the field holds sub-tables named after parts


def parts_field() -> Any:
    """A field holding the raw settings tables of parts, keyed by part name (``[data.dirichlet]``).

    The schema does not know which parts exist; each table is validated by its owner when the
    part is looked up in its registry.
    """
    return dataclasses.field(default_factory=dict, metadata={PARTS: True})


def coerce(path: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # the first member that takes the value
        for member in typing.get_args(annotation):
            try:
                return coerce(path, value, member)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))
        raise ConfigError(f"{path}: expected {names}, got {value!r} ({type(value).__name__})")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, list) and dataclasses.is_dataclass(item_type):
            if all(isinstance(v, dict) for v in value):
                return [build(item_type, v, f"{path}[{i}].") for i, v in enumerate(value)]
        elif isinstance(value, list):
            return [coerce(f"{path}[{i}]", v, item_type) for i, v in enumerate(value)]
    elif origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if isinstance(value, dict):
            return {coerce(f"{path}.{k}", k, key_type): coerce(f"{path}.{k}", v, value_type) for k, v in value.items()}
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return build(annotation, value, f"{path}.")
        raise ConfigError(f"{path}: expected a table [{path}], got {value!r}")
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{path}: expected {name}, got {value!r} ({type(value).__name__})")


def build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``raw``, every key checked and coerced; ``prefix`` names the table.

    A field marked with :func:`parts_field` collects the sub-tables whose names are not fields.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if not f.metadata.get(PARTS)}
    parts = next((f.name for f in fields(cls) if f.metadata.get(PARTS)), None)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key in known:
            kwargs[key] = coerce(path, value, hints[key])
        elif parts is not None and isinstance(value, dict):
            kwargs.setdefault(parts, {})[key] = dict(value)
        else:
            tables = f", or a settings table [{prefix}NAME] of a part" if parts else ""
            raise ConfigError(f"{path}: unknown key; valid keys here are {', '.join(sorted(known))}{tables}")
    obj = cls(**kwargs)
    check(obj, prefix)
    return obj


def check(obj: Any, prefix: str) -> None:
    """Run ``obj.validate()`` (when it has one), turning a :class:`SettingError` into ConfigError."""
    validate = getattr(obj, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except SettingError as err:
        raise ConfigError(f"{prefix}{err.key}: {err.fix}") from None


def build_settings(cls: type | None, raw: dict[str, Any], prefix: str) -> Any:
    """A part's settings from its table (``cls`` None: the part takes none, so the table must be empty)."""
    if cls is None:
        if raw:
            key = next(iter(raw))
            raise ConfigError(f"{prefix}{key}: unknown key; this part takes no settings")
        return NoSettings()
    return build(cls, raw, prefix)


def parse_value(raw: str) -> Any:
    """A TOML literal (``40``, ``true``, ``[1, 2]``); a bare word such as ``digits`` is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def as_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict; parts tables are merged in as sub-tables."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(PARTS):
            out.update({k: dict(v) for k, v in value.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value)
        elif isinstance(value, list):
            out[f.name] = [as_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out
