"""One small generic registry: a name -> a part and the dataclass of its settings.

Every kind of part (data sets, partitioners, models, strategies, strategy wrappers, client
behaviours) has one :class:`Registry`. A built-in part is one ``register`` line; a user's own part
needs no line at all: name it by its import path in Flower's ``module:attr`` convention
(``model.name = "mylab.nets:resnet18"``). Either way its settings class is found the same way
(``register(..., settings=...)`` or the object's ``Settings`` attribute) and validated the same way.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
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
    """The object named ``module:attr`` (attr may be dotted), or ConfigError naming ``field``.

    The working directory is searched too, as ``python -m`` and Flower's app loader do (an
    installed console script would not), so a lab's module beside its experiment is found.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or module_name.startswith(".") or not attr:  # importlib would raise a bare ValueError
        raise ConfigError(f"{field}: {path!r} is not an import path; write 'module:attr' with an absolute module, "
                          "e.g. 'mylab.nets:tiny_mlp'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
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
    call
        The positional arguments every part of this kind is called with (``("settings", "seed")``),
        checked against a part named by import path as soon as it is imported; None: no check.
    """

    def __init__(self, kind: str, field: str, call: tuple[str, ...] | None = None) -> None:
        self.kind, self.field, self.call = kind, field, call
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

    def registered(self, name: str) -> bool:
        """Whether ``name`` was registered (not an alias, not an import path)."""
        return name in self._parts

    def get(self, name: str, field: str | None = None) -> Part[T]:
        """The part called ``name``: registered, or an import path ``module:attr``."""
        field = field or self.field
        if name in self._parts:
            obj, settings = self._parts[name]
            return Part(name, obj, settings)
        if ":" in name:
            obj = import_path(name, field)
            self._check_call(obj, name, field)
            return Part(name, obj, getattr(obj, "Settings", None))
        raise ConfigError(f"{field}: unknown {self.kind} {name!r}; choose one of {self.names()} "
                          "or give an import path 'module:attr'")

    def _check_call(self, obj: Any, name: str, field: str) -> None:
        """Refuse a user's object that cannot take this kind's arguments, before anything calls it.

        Otherwise the first call, deep in data loading or model building, fails with a traceback
        that names neither the config key nor the signature expected.
        """
        if self.call is None:
            return
        expected = f"({', '.join(self.call)})"
        try:
            inspect.signature(obj).bind(*self.call)
        except TypeError as err:  # not callable, or the arguments do not fit
            raise ConfigError(f"{field}: {name!r} cannot be called as a {self.kind} {expected} ({err}); "
                              f"name a function or class taking {expected}") from None
        except ValueError:  # no signature to inspect (some builtins): the call itself will tell
            return

    def factory(self, name: str) -> Callable[..., Any]:
        return self.get(name).obj  # type: ignore[return-value]


def check_tables(tables: dict[str, dict], used: list[Part], registries: list[Registry], prefix: str) -> None:
    """Check every settings table in ``tables`` against the part it is named after.

    A table named after a part in ``used`` is built with that part's settings class; any other
    must name a part of one of ``registries`` (registered, or an import path) and be valid for it
    too, so a misspelt table fails instead of being ignored.
    """
    in_use = {p.name: p for p in used}
    for name in tables:
        part = in_use.get(name)
        if part is None:
            registry = next((r for r in registries if r.registered(name)), registries[0] if ":" in name else None)
            if registry is None:
                known = sorted(n for r in registries for n in r.names())
                raise ConfigError(f"{prefix}{name}: no {' or '.join(r.kind for r in registries)} is called {name!r}; "
                                  f"settings tables are named after one of {known}")
            part = registry.get(name, f"{prefix}{name}")
        part.build_settings(tables, prefix)
