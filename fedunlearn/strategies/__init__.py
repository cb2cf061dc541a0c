"""Unlearning strategies, one file each, and the registries that name them.

:data:`STRATEGIES` maps a name to an :class:`~fedunlearn.strategies.base.Unlearner` class and
:data:`WRAPPERS` to an add-on that wraps any of them (``puf+ieu``). Adding a strategy is one file
and one ``register`` line below; a user's own is named by its import path (``mylab.unlearn:Mine``).
A strategy entry in ``forgetting.strategies`` reads ``NAME[+WRAPPER...][@key=value,...]``: the
settings after ``@`` override the parts' tables (``[forgetting.puf]``) for that entry only, so a
sweep runs side by side (``puf@eta=40``). An entry may also be an inline table with a short
label: ``{ strategy = "puf+ieu", label = "puf-ieu-40", eta = 40 }``; the label names its rows,
folder and legend entries, and the full spec stays in the ``spec`` column of the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedunlearn.config import ExperimentConfig, ForgettingConfig, parse_override
from fedunlearn.registry import Part, Registry, check_tables
from fedunlearn.settings import ConfigError
from fedunlearn.strategies.augment import Augment
from fedunlearn.strategies.base import (
    Unlearner,
    UnlearnerWrapper,
    UnlearningContext,
    UnlearningError,
)
from fedunlearn.strategies.fedavg import (
    ClientUpdate,
    RecordingFedAvg,
    RoundReport,
    TooFewClientsError,
)
from fedunlearn.strategies.federaser import FedEraser
from fedunlearn.strategies.fedrecovery import FedRecovery
from fedunlearn.strategies.ieu import IEU
from fedunlearn.strategies.influence import Influence
from fedunlearn.strategies.mask import Mask
from fedunlearn.strategies.natural import Natural
from fedunlearn.strategies.negation import NoT
from fedunlearn.strategies.output_filter import OutputFilter
from fedunlearn.strategies.pga import PGA
from fedunlearn.strategies.puf import PUF
from fedunlearn.strategies.retrain import Retrain
from fedunlearn.strategies.trw import TRW

STRATEGIES: Registry = Registry("strategy", "forgetting.strategies")
STRATEGIES.register("retrain", Retrain)
STRATEGIES.register("natural", Natural)
STRATEGIES.register("puf", PUF)
STRATEGIES.register("pga", PGA)
STRATEGIES.register("federaser", FedEraser)
STRATEGIES.register("output-filter", OutputFilter)
STRATEGIES.register("trw", TRW)
STRATEGIES.register("fedrecovery", FedRecovery)
STRATEGIES.register("not", NoT)
STRATEGIES.register("influence", Influence)
STRATEGIES.alias("puf-ieu", "puf+ieu")

WRAPPERS: Registry = Registry("wrapper", "forgetting.strategies")
WRAPPERS.register("ieu", IEU)
WRAPPERS.register("mask", Mask)
WRAPPERS.register("augment", Augment)

REFERENCE = "retrain"  # added when no listed strategy is from scratch: every metric needs a reference


@dataclass
class StrategySpec:
    """One entry of ``forgetting.strategies``, resolved: its parts and their validated settings.

    Attributes
    ----------
    label
        The entry's name: its rows, folder and legend entries carry it (the spec unless a label
        was given).
    spec
        The entry in full, ``NAME[+WRAPPER][@key=value,...]`` with every setting it overrides.
    parts
        The strategy, then its wrappers in order.
    settings
        One settings object per part.
    """

    label: str
    parts: list[Part]
    settings: list[Any]
    spec: str = ""

    def build(self) -> Unlearner:
        """A fresh unlearner: the strategy wrapped by each wrapper in turn."""
        unlearner = self.parts[0].obj(self.settings[0])
        for part, settings in zip(self.parts[1:], self.settings[1:], strict=True):
            unlearner = part.obj(unlearner, settings)
        return unlearner

    @property
    def from_scratch(self) -> bool:
        return bool(self.parts[0].obj.from_scratch)

    @property
    def needs_history(self) -> bool:
        return any(getattr(p.obj, "needs_history", False) for p in self.parts)

    def describe_step(self, unlearner: Unlearner) -> str:
        """The step-size settings of ``unlearner`` as config keys (``forgetting.puf.eta = 40``)."""
        owners = {k: p.name for p in reversed(self.parts) for k in getattr(p.obj, "step_settings", ())}
        return ", ".join(f"forgetting.{owners.get(k, self.parts[0].name)}.{k} = {v}"
                         for k, v in unlearner.step_size().items())


def _check_part(part: Part, base: type) -> None:
    if not (isinstance(part.obj, type) and issubclass(part.obj, base)):
        raise ConfigError(f"forgetting.strategies: {part.name!r} is not a {base.__name__} subclass")


def _flat(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """An inline table's settings as (dotted key, value), nested tables (``ieu.decay``) flattened."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        out += _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return out


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME@key=value,...`` as (NAME, ["key=value", ...]), the items as written."""
    name, _, at = spec.partition("@")
    return name.strip(), [item.strip() for item in at.split(",") if item.strip()]


def spec_parts(name: str) -> list[Part]:
    """The strategy and the wrappers ``NAME+WRAPPER...`` names, in order (ConfigError for an unknown one)."""
    names = STRATEGIES.expand(name).split("+")
    return [STRATEGIES.get(names[0])] + [WRAPPERS.get(n) for n in names[1:]]


def _at_settings(written: str) -> tuple[str, list[tuple[list[str], Any]]]:
    """``NAME@key=value,...`` as (NAME, [(keys, value), ...])."""
    name, items = split_spec(written)
    return name, [_at_setting(item, written, name) for item in items]


def _at_setting(item: str, written: str, name: str) -> tuple[list[str], Any]:
    """One ``key=value`` after ``@``; its error names the strategy entry, not ``--set`` (which parses it)."""
    try:
        return parse_override(item)
    except ConfigError:
        raise ConfigError(f"forgetting.strategies: {item!r} in {written!r} is not key=value; write e.g. "
                          f"{name}@key=value") from None


def _entry(entry: str | dict[str, Any]) -> tuple[str, str, list[tuple[list[str], Any]]]:
    """(label, spec, overrides) of one ``forgetting.strategies`` entry, a string or an inline table."""
    if isinstance(entry, str):
        return entry, entry, _at_settings(entry)[1]
    table = dict(entry)
    written = table.pop("strategy", None)
    label = table.pop("label", None)
    if not isinstance(written, str) or not (label is None or isinstance(label, str)):
        raise ConfigError(f"forgetting.strategies: {entry!r} needs strategy = \"NAME\" (and label = \"...\" "
                          "if any), e.g. { strategy = \"puf\", label = \"puf-40\", eta = 40 }")
    name, overrides = _at_settings(written)
    overrides += [(key.split("."), value) for key, value in _flat(table)]
    spec = name + ("@" + ",".join(f"{'.'.join(k)}={_literal(v)}" for k, v in overrides) if overrides else "")
    return label or spec, spec, overrides


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)


def strategy_spec(entry: str | dict[str, Any], forgetting: ForgettingConfig) -> StrategySpec:
    """Resolve one ``forgetting.strategies`` entry (names, wrappers, ``@`` settings, label) and validate it."""
    label, spec, overrides = _entry(entry)
    if not label or "/" in label or label.startswith(".") or label == "original":
        raise ConfigError(f"forgetting.strategies: {label!r} cannot name a strategy's rows and folder; choose a "
                          "label without '/', not starting with '.', other than 'original'")
    name = spec.partition("@")[0]
    names = STRATEGIES.expand(name).split("+")
    parts = spec_parts(name)
    _check_part(parts[0], Unlearner)
    for p in parts[1:]:
        _check_part(p, UnlearnerWrapper)
    tables = [dict(forgetting.settings.get(p.name, {})) for p in parts]
    for keys, value in overrides:
        owners = [i for i, p in enumerate(parts) if (keys[0] == p.name and len(keys) == 2)
                  or (len(keys) == 1 and keys[0] in getattr(p.settings, "__dataclass_fields__", {}))]
        if len(owners) != 1:
            valid = sorted(f"{p.name}.{k}" for p in parts for k in getattr(p.settings, "__dataclass_fields__", {}))
            raise ConfigError(f"forgetting.strategies: {'.'.join(keys)!r} in {label!r} is "
                              f"{'ambiguous' if owners else 'not a setting of ' + '+'.join(names)}; "
                              f"write {name}@key=value with keys among {valid or 'none (it takes no settings)'}")
        tables[owners[0]][keys[-1]] = value
    settings = [p.build_settings({p.name: t}, "forgetting.") for p, t in zip(parts, tables, strict=True)]
    return StrategySpec(label, parts, settings, spec)


def _add_spec(specs: list[StrategySpec], spec: StrategySpec, note: str = "") -> None:
    """Append ``spec`` unless an equal entry is there; refuse a label that already names another entry.

    The added reference is checked too: a strategy labelled like it would share its rows and folder.
    """
    same = next((s for s in specs if s.label == spec.label), None)
    if same is not None and same.spec != spec.spec:
        raise ConfigError(f"forgetting.strategies: the label {spec.label!r} names both {same.spec!r} and "
                          f"{spec.spec!r}{note}; give each entry its own label")
    if same is None:
        specs.append(spec)


def resolve_strategies(cfg: ExperimentConfig) -> list[StrategySpec]:
    """Every listed strategy resolved and validated, the reference (from scratch) first.

    Refuses a settings table that names no strategy or wrapper, and a strategy that needs the
    pseudo-gradient history when the experiment does not keep it.
    """
    f = cfg.forgetting
    for table in f.settings:
        if table != STRATEGIES.expand(table):
            raise ConfigError(f"forgetting.{table}: {table} stands for {STRATEGIES.expand(table)}; put its settings "
                              "in the tables of those parts")
    specs: list[StrategySpec] = []
    for entry in f.strategies:
        _add_spec(specs, strategy_spec(entry, f))
    if not any(s.from_scratch for s in specs):
        _add_spec(specs, strategy_spec(REFERENCE, f), " (the reference, added when none is listed)")
    check_tables(f.settings, [p for s in specs for p in s.parts], [STRATEGIES, WRAPPERS], "forgetting.")
    specs.sort(key=lambda s: not s.from_scratch)
    for spec in specs:  # before any training: a pair that cannot run is refused now
        unlearner = spec.build()
        for i, request in enumerate(cfg.forget_requests()):
            why = unlearner.serves(request.kind)
            if why:
                raise ConfigError(f"forgetting.strategies: {spec.label} {why}, and forget[{i}] is a {request.kind} "
                                  f"request ({request.describe()}); remove {spec.label} from the list or the request")
        why = unlearner.refuses(cfg)
        if why:
            raise ConfigError(f"forgetting.strategies: {spec.label} {why}; remove it from the list or change its parts")
    needs = [s.label for s in specs if s.needs_history]
    if needs and not cfg.store.history:
        raise ConfigError(f"forgetting.strategies: {', '.join(needs)} {'need' if len(needs) > 1 else 'needs'} the pseudo-gradient history; "
                          "set store.history = true")
    return specs


__all__ = ["REFERENCE", "STRATEGIES", "WRAPPERS", "ClientUpdate", "RecordingFedAvg", "RoundReport", "StrategySpec",
           "TooFewClientsError", "UnlearningContext", "UnlearningError", "Unlearner", "UnlearnerWrapper",
           "resolve_strategies", "spec_parts", "split_spec", "strategy_spec"]
