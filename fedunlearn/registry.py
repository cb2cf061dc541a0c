"""One small generic registry: a name -> a part and the dataclass of its settings.

Every kind of part (data sets, partitioners, models, strategies, strategy wrappers, client
behaviours) has one :class:`Registry`. A built-in part is one ``register`` line; a user's own part
needs no line at all: name it by its import path in Flower's ``module:attr`` convention
(``model.name = "mylab.nets:resnet18"``). Either way its settings class is found the same way
(``register(..., settings=...)`` or the object's ``Settings`` attribute) and validated the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedunlearn.settings import ConfigError, build_settings

T = TypeVar("T")


@dataclass(frozen=True)
class Part(Generic[T]):
    """A resolved part: the name it was asked by, the object and its settings class (None: none)."""

    name: str
    obj: T
    settings: type | None

    def build_settings(self, tables: dict[str, dict], prefix: str) -> Any:
        """This part's settings from the table named after it in ``tables`` (defaults when absent)."""
        return build_settings(self.settings, tables.get(self.name, {}), f"{prefix}{self.name}.")


def import_path(path: str, field: str) -> Any:
    """The object named ``module:attr`` (attr may be dotted), or ConfigError naming ``field``."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{field}: cannot import module {module_name!r} of {path!r} ({err}); "
                          "put it on the Python path (run from its folder or set PYTHONPATH)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attr!r}; check {path!r}")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named parts of one kind.

    Parameters
    ----------
    kind
        What the parts are, for messages ("data set", "model", ...).
    field
        The config key that names one ("data.name"), for messages.
    """

    def __init__(self, kind: str, field: str) -> None:
        self.kind, self.field = kind, field
        self._parts: dict[str, tuple[T, type | None]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, settings: type | None = None) -> Any:
        """Register ``obj`` under ``name`` (or use as a decorator when ``obj`` is omitted)."""
        def add(o: T) -> T:
            self._parts[name] = (o, settings if settings is not None else getattr(o, "Settings", None))
            return o
        return add if obj is None else add(obj)

    def alias(self, name: str, target: str) -> None:
        """Let ``name`` stand for the spec ``target`` (e.g. ``puf-ieu`` for ``puf+ieu``)."""
        self._aliases[name] = target

    def expand(self, name: str) -> str:
        return self._aliases.get(name, name)

    def names(self) -> list[str]:
        return sorted([*self._parts, *self._aliases])

    def __contains__(self, name: str) -> bool:
        return name in self._parts or name in self._aliases or ":" in name

    def get(self, name: str, field: str | None = None) -> Part[T]:
        """The part called ``name``: registered, or an import path ``module:attr``."""
        field = field or self.field
        if name in self._parts:
            obj, settings = self._parts[name]
            return Part(name, obj, settings)
        if ":" in name:
            obj = import_path(name, field)
            return Part(name, obj, getattr(obj, "Settings", None))
        raise ConfigError(f"{field}: unknown {self.kind} {name!r}; choose one of {self.names()} "
                          "or give an import path 'module:attr'")

    def settings_of(self, name: str) -> type | None:
        return self.get(name).settings

    def factory(self, name: str) -> Callable[..., Any]:
        return self.get(name).obj  # type: ignore[return-value]
