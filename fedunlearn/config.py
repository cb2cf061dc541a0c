"""Typed experiment configuration: TOML in, validated dataclasses out.

Every invalid key or value raises :class:`ConfigError` with one line that names the field and the
fix, so the CLI can print it and exit 2 before anything is written.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field and the fix."""


@dataclass
class BackdoorConfig:
    """Trigger-patch poisoning of chosen clients' train data.

    A poisoned sample gets a ``patch_size`` x ``patch_size`` square of value ``patch_value`` in
    its bottom-right corner and the label ``target_label``. Only samples whose true label differs
    from the target are poisoned, so every poisoned label really changes. ``patch_size = 0``
    relabels without a trigger: mislabelled data, forgotten and measured by forget accuracy.
    """

    clients: list[int] = field(default_factory=list)
    target_label: int = 0
    fraction: float = 0.5
    patch_size: int = 2
    patch_value: float = 1.0


@dataclass
class DataConfig:
    """Which data set, where it lives and how it is split among clients."""

    name: str = "digits"
    root: str = ""
    download: bool = False
    num_clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    min_partition_size: int = 10
    local_test_fraction: float = 0.0
    synthetic_samples: int = 2000
    synthetic_features: int = 20
    synthetic_classes: int = 4
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)


@dataclass
class ModelConfig:
    """Model architecture; ``hidden`` is the width of the last hidden layer."""

    name: str = "cnn"
    hidden: int = 64


@dataclass
class TrainConfig:
    """The FedAvg recipe: rounds, client sampling and the local SGD run by every client."""

    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    server_lr: float = 1.0
    fraction_train: float = 1.0
    min_train_clients: int = 0


@dataclass
class StoreConfig:
    """What the server keeps of the clients' pseudo-gradients.

    The latest pseudo-gradient of every client is always kept. With ``history`` every round's is
    kept too, written to disk and cached in RAM up to ``ram_budget_mb``.
    """

    history: bool = False
    ram_budget_mb: float = 256.0
    dtype: str = "float32"


@dataclass
class SimulationConfig:
    """Flower Simulation Engine (Ray backend) settings."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str = ""
    checkpoint_every: int = 1


@dataclass
class ForgetRequest:
    """Clients asking to be forgotten together, after regular FedAvg round ``round``.

    ``round = 0`` means after the last training round (``train.rounds``). Requests at earlier
    rounds form a sequence: each strategy unlearns at the first request's round, recovers, goes on
    with regular rounds over the remaining clients up to the next request, and so on until
    ``train.rounds`` regular rounds have run in all.
    """

    clients: list[int] = field(default_factory=list)
    round: int = 0


@dataclass
class ForgettingConfig:
    """Which unlearning strategies run and every constant they use (ALGORITHMS.md, sections 2-5).

    Recovery is FedAvg over the remaining clients after the unlearning step. With
    ``recovery = "until-retrain"`` it stops at the first round whose test accuracy reaches the
    retrained model's less ``recovery_tolerance`` (the PUF authors' protocol has tolerance 0; on a
    test set of a few hundred images one standard error of accuracy is about 0.01, so a strict
    target is often hit or missed by noise), at most ``recovery_rounds`` rounds; with ``"fixed"``
    it always runs ``recovery_rounds`` rounds.

    Before any strategy runs, the original model must hold what is to be forgotten: test accuracy
    at least ``min_original_test_acc`` (it converged) and, with a backdoor, attack success rate at
    least ``min_original_backdoor_asr`` (it learnt the backdoor); otherwise the comparison could
    not tell strategies apart and the run stops with exit code 2. With ``check_separation``
    the retrained model must also fall short of the probe's threshold on the forgotten clients
    (else the original holds nothing measurable that retraining removes).
    """

    strategies: list[str] = field(default_factory=lambda: ["retrain", "natural", "puf", "puf-ieu"])
    recovery: str = "until-retrain"
    recovery_rounds: int = 30
    recovery_tolerance: float = 0.01
    natural_rounds: int = 5
    puf_mode: str = "regular"
    puf_eta: float = 20.0
    puf_offline: bool = False
    ieu_decay: float = 0.1
    ieu_noise: float = 0.1
    ieu_rounds: int = 1
    pga_lr: float = 0.01
    pga_momentum: float = 0.9
    pga_clip: float = 5.0
    pga_epochs: int = 5
    pga_distance_threshold: float = 2.2
    pga_radius_inits: int = 10
    federaser_interval: int = 1
    federaser_calibration_ratio: float = 0.5
    min_original_test_acc: float = 0.5
    min_original_backdoor_asr: float = 0.5
    check_separation: bool = True


@dataclass
class ProbeConfig:
    """The relearning-delay probe (ALGORITHMS.md section 4).

    From each model, FedAvg rounds run with the forgotten clients re-added (``modes`` has ``"all"``:
    every client) and the forget metric is measured after every round; the delay is the first
    round at which it reaches (1 − ``alpha``) times the original model's value ((1 + alpha) for a
    loss), capped at ``max_rounds`` (censored beyond). Mode ``"alone"`` lets the forgotten clients
    train alone and counts local SGD steps at ``alone_lr`` (a round relearns a backdoor at once),
    simulated on the server step by step, capped at ``alone_max_steps``. ``metric = "auto"`` is
    ``backdoor`` (attack success rate) when the experiment has a backdoor, else ``forget_acc``.
    """

    enabled: bool = True
    metric: str = "auto"
    modes: list[str] = field(default_factory=lambda: ["all"])
    max_rounds: int = 10
    alpha: float = 0.05
    alone_lr: float = 0.002
    alone_max_steps: int = 30


@dataclass
class ExperimentConfig:
    """A whole experiment; ``seed`` drives partitions, init, sampling and local training."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    forget: list[ForgetRequest] = field(default_factory=list)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def probe_metric(self) -> str:
        """The probe's metric with ``auto`` resolved."""
        if self.probe.metric != "auto":
            return self.probe.metric
        return "backdoor" if self.data.backdoor.clients and self.data.backdoor.patch_size > 0 else "forget_acc"

    def forget_requests(self) -> list[ForgetRequest]:
        """The requests in round order, ``round = 0`` resolved to the last training round."""
        resolved = [ForgetRequest(list(r.clients), r.round or self.train.rounds) for r in self.forget]
        return sorted(resolved, key=lambda r: r.round)


def _check_value(path: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(annotation)
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
                return [_build(item_type, v, f"{path}[{i}].") for i, v in enumerate(value)]
        elif isinstance(value, list):
            return [_check_value(f"{path}[{i}]", v, item_type) for i, v in enumerate(value)]
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{path}: expected {name}, got {value!r} ({type(value).__name__})")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown key; valid keys here are {', '.join(sorted(known))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a table [{path}], got {value!r}")
            kwargs[key] = _build(hint, value, f"{path}.")
        else:
            kwargs[key] = _check_value(path, value, hint)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.rounds=20")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as `digits` is a string
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as TOML literals) to a raw TOML dict."""
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {part} is not a table")
            node = child
        node[keys[-1]] = value
    return raw


def _validate(cfg: ExperimentConfig) -> None:
    """Range checks; registries are checked by name so typos list the valid choices."""
    from fedunlearn.data import DATASETS, PARTITIONERS
    from fedunlearn.models import MODELS

    def need(ok: bool, path: str, fix: str) -> None:
        if not ok:
            raise ConfigError(f"{path}: {fix}")

    d, t = cfg.data, cfg.train
    need(d.name in DATASETS, "data.name", f"unknown data set {d.name!r}; choose one of {sorted(DATASETS)}")
    need(d.partition in PARTITIONERS, "data.partition",
         f"unknown partitioner {d.partition!r}; choose one of {sorted(PARTITIONERS)}")
    need(cfg.model.name in MODELS, "model.name", f"unknown model {cfg.model.name!r}; choose one of {sorted(MODELS)}")
    need(d.num_clients >= 2, "data.num_clients", f"must be >= 2 (got {d.num_clients})")
    need(d.alpha > 0, "data.alpha", f"must be > 0 (got {d.alpha})")
    need(d.classes_per_client >= 1, "data.classes_per_client", f"must be >= 1 (got {d.classes_per_client})")
    need(d.min_partition_size >= 0, "data.min_partition_size", f"must be >= 0 (got {d.min_partition_size})")
    need(0 <= d.local_test_fraction < 1, "data.local_test_fraction",
         f"must be in [0, 1) (got {d.local_test_fraction})")
    need(d.synthetic_classes >= 2, "data.synthetic_classes", f"must be >= 2 (got {d.synthetic_classes})")
    b = d.backdoor
    for c in b.clients:
        need(0 <= c < d.num_clients, "data.backdoor.clients",
             f"client id {c} is not in 0..{d.num_clients - 1}")
    need(0 < b.fraction <= 1, "data.backdoor.fraction", f"must be in (0, 1] (got {b.fraction})")
    need(b.patch_size >= 0, "data.backdoor.patch_size", f"must be >= 0 (got {b.patch_size}); 0 relabels without a trigger")
    need(cfg.model.hidden >= 1, "model.hidden", f"must be >= 1 (got {cfg.model.hidden})")
    need(t.rounds >= 1, "train.rounds", f"must be >= 1 (got {t.rounds})")
    need(t.local_epochs >= 1, "train.local_epochs", f"must be >= 1 (got {t.local_epochs})")
    need(t.batch_size >= 1, "train.batch_size", f"must be >= 1 (got {t.batch_size})")
    need(t.lr > 0, "train.lr", f"must be > 0 (got {t.lr})")
    need(0 <= t.momentum < 1, "train.momentum", f"must be in [0, 1) (got {t.momentum})")
    need(t.server_lr > 0, "train.server_lr", f"must be > 0 (got {t.server_lr})")
    need(0 < t.fraction_train <= 1, "train.fraction_train", f"must be in (0, 1] (got {t.fraction_train})")
    need(0 <= t.min_train_clients <= d.num_clients, "train.min_train_clients",
         f"must be in 0..{d.num_clients} (got {t.min_train_clients}); 0 means every sampled client")
    need(cfg.store.dtype in ("float32", "float16"), "store.dtype",
         f"must be 'float32' or 'float16' (got {cfg.store.dtype!r})")
    need(cfg.store.ram_budget_mb >= 0, "store.ram_budget_mb", f"must be >= 0 (got {cfg.store.ram_budget_mb})")
    need(cfg.simulation.num_cpus > 0, "simulation.num_cpus", f"must be > 0 (got {cfg.simulation.num_cpus})")
    need(cfg.simulation.num_gpus >= 0, "simulation.num_gpus", f"must be >= 0 (got {cfg.simulation.num_gpus})")
    need(cfg.simulation.checkpoint_every >= 1, "simulation.checkpoint_every",
         f"must be >= 1 (got {cfg.simulation.checkpoint_every})")
    _validate_forgetting(cfg, need)


def strategy_variant(spec: str, forgetting: ForgettingConfig) -> tuple[str, ForgettingConfig]:
    """Split ``"puf@puf_eta=40,puf_mode=special"`` into the registered name and its settings.

    A variant is a strategy run with some ``forgetting`` settings changed, so one comparison can
    sweep a step size; its rows and folder carry the whole spec as their name.
    """
    from fedunlearn.strategies import STRATEGIES

    name, _, settings = spec.partition("@")
    if name not in STRATEGIES:
        raise ConfigError(f"forgetting.strategies: unknown strategy {name!r} in {spec!r}; "
                          f"choose from {sorted(STRATEGIES)}")
    raw = config_to_dict(forgetting)
    for item in filter(None, settings.split(",")):
        keys, value = _parse_override(item)
        if len(keys) != 1 or keys[0] not in raw or keys[0] == "strategies":
            raise ConfigError(f"forgetting.strategies: {item!r} in {spec!r} is not a forgetting setting; "
                              "write name@key=value,key=value with keys of [forgetting]")
        raw[keys[0]] = value
    return name, _build(ForgettingConfig, raw, "forgetting.")


def _validate_forgetting(cfg: ExperimentConfig, need) -> None:
    f, k = cfg.forgetting, cfg.data.num_clients
    for spec in f.strategies:
        _, variant = strategy_variant(spec, f)
        if variant != f:
            _validate_forgetting(dataclasses.replace(cfg, forgetting=dataclasses.replace(variant, strategies=[])), need)
    need(f.recovery in ("until-retrain", "fixed"), "forgetting.recovery",
         f"must be 'until-retrain' or 'fixed' (got {f.recovery!r})")
    need(f.recovery_rounds >= 0, "forgetting.recovery_rounds", f"must be >= 0 (got {f.recovery_rounds})")
    need(0 <= f.recovery_tolerance < 1, "forgetting.recovery_tolerance",
         f"must be in [0, 1) (got {f.recovery_tolerance})")
    need(f.natural_rounds >= 0, "forgetting.natural_rounds", f"must be >= 0 (got {f.natural_rounds})")
    need(f.puf_mode in ("regular", "special"), "forgetting.puf_mode",
         f"must be 'regular' or 'special' (got {f.puf_mode!r})")
    need(f.puf_eta > 0, "forgetting.puf_eta", f"must be > 0 (got {f.puf_eta}); the authors use 20 (regular), 2 (special)")
    need(0 <= f.ieu_decay < 1, "forgetting.ieu_decay", f"must be in [0, 1) (got {f.ieu_decay})")
    need(f.ieu_noise >= 0, "forgetting.ieu_noise", f"must be >= 0 (got {f.ieu_noise})")
    need(f.ieu_rounds >= 1, "forgetting.ieu_rounds", f"must be >= 1 (got {f.ieu_rounds})")
    need(f.pga_lr > 0 and f.pga_epochs >= 1 and f.pga_radius_inits >= 1, "forgetting.pga_lr/pga_epochs/pga_radius_inits",
         "must be positive")
    need(f.federaser_interval >= 1, "forgetting.federaser_interval", f"must be >= 1 (got {f.federaser_interval})")
    need(0 < f.federaser_calibration_ratio <= 1, "forgetting.federaser_calibration_ratio",
         f"must be in (0, 1] (got {f.federaser_calibration_ratio})")
    validate_requests(cfg.forget_requests(), k, cfg.train.rounds, "forget")
    p = cfg.probe
    need(p.metric in ("auto", "forget_acc", "forget_loss", "backdoor"), "probe.metric",
         f"must be auto, forget_acc, forget_loss or backdoor (got {p.metric!r})")
    need(p.metric != "backdoor" or (bool(cfg.data.backdoor.clients) and cfg.data.backdoor.patch_size > 0),
         "probe.metric", "backdoor needs data.backdoor.clients with a trigger (patch_size > 0); use forget_acc")
    need(bool(p.modes) and all(m in ("all", "alone") for m in p.modes), "probe.modes",
         f"must list 'all' and/or 'alone' (got {p.modes})")
    need(p.max_rounds >= 1, "probe.max_rounds", f"must be >= 1 (got {p.max_rounds})")
    need(0 <= p.alpha < 1, "probe.alpha", f"must be in [0, 1) (got {p.alpha})")
    need(p.alone_lr > 0 and p.alone_max_steps >= 1, "probe.alone_lr/alone_max_steps", "must be positive")


def validate_requests(requests: list[ForgetRequest], num_clients: int, last_round: int, where: str) -> None:
    """Guards shared by the TOML ``[[forget]]`` tables and the ``forget`` command's flags."""
    seen: set[int] = set()
    for i, r in enumerate(requests):
        clients = f"{where}[{i}].clients" if len(requests) > 1 or where == "forget" else where
        if not r.clients:
            raise ConfigError(f"{clients}: empty; name at least one client id")
        for c in r.clients:
            if not 0 <= c < num_clients:
                raise ConfigError(f"{clients}: unknown client id {c}; the federation has clients "
                                  f"0..{num_clients - 1}")
            if c in seen:
                raise ConfigError(f"{clients}: client {c} is already forgotten by an earlier request")
            seen.add(c)
        if not 1 <= r.round <= last_round:
            raise ConfigError(f"{where}[{i}].round: {r.round} is not a round the run reached (1..{last_round}); "
                              "use 0 for the last training round")
    if len(seen) >= num_clients and requests:
        raise ConfigError(f"{where}: the requests forget every one of the {num_clients} clients; "
                          "keep at least one client in the federation")


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a TOML-shaped dict."""
    cfg = _build(ExperimentConfig, raw, "")
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a TOML experiment file (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"experiment file {str(p)!r} not found; pass the path of a TOML file")
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML ({err}); fix the syntax") from None
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (the inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(raw: dict[str, Any], prefix: str = "") -> str:
    """Serialise a config dict as TOML: scalars, then a table per dict, an array of tables per list of dicts."""

    def is_table_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict) and not is_table_list(v)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in raw.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            text += f"\n[{name}]\n" + to_toml(v, f"{name}.")
        elif is_table_list(v):
            text += "".join(f"\n[[{name}]]\n" + to_toml(item, f"{name}.") for item in v)
    return text
