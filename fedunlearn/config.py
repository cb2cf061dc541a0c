"""The experiment schema and its TOML loader: typed, validated dataclasses, and no registry.

Every invalid key or value raises :class:`ConfigError` with one line that names the field and the
fix, so the CLI can print it and exit 2 before anything is written. Which data sets, models and
strategies exist is not this module's business: each part's settings live in a table named after
it (``[data.dirichlet]``, ``[model.cnn]``, ``[forgetting.puf]``) and are checked by the part's own
settings class when :mod:`fedunlearn.parts` looks it up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from fedunlearn.settings import ConfigError, as_dict, build, parse_value, parts_field, require

__all__ = ["ConfigError", "ExperimentConfig", "ForgetRequest", "load_config", "config_from_dict", "config_to_dict",
           "apply_overrides", "to_toml"]


CLIENT_RULES = ("largest", "median", "random")  # a client named by a rule, resolved per seed


@dataclass
class BackdoorConfig:
    """Trigger-patch poisoning of chosen clients' train data.

    A poisoned sample gets a ``patch_size`` x ``patch_size`` square of value ``patch_value`` in
    its bottom-right corner and the label ``target_label``. Only samples whose true label differs
    from the target are poisoned, so every poisoned label really changes. ``patch_size = 0``
    relabels without a trigger: mislabelled data, forgotten and measured by forget accuracy.
    ``clients`` holds ids, rules (``"largest"``, ``"median"``, ``"random"``, resolved per seed on
    the partition) or ``"forgotten"``: the clients the forget requests name, written once there.
    """

    clients: list[int | str] = field(default_factory=list)
    target_label: int = 0
    fraction: float = 0.5
    patch_size: int = 2
    patch_value: float = 1.0

    def validate(self) -> None:
        require(0 < self.fraction <= 1, "fraction", f"must be in (0, 1] (got {self.fraction})")
        require(self.patch_size >= 0, "patch_size", f"must be >= 0 (got {self.patch_size}); 0 relabels without a trigger")
        require(self.target_label >= 0, "target_label", f"must be >= 0 (got {self.target_label})")


@dataclass
class DataConfig:
    """Which data set, how it is split among clients, and which clients are poisoned.

    The data set's and the partitioner's own settings are tables named after them, e.g.
    ``[data.dirichlet] alpha = 0.5`` or ``[data.mnist] root = "/data"``. ``validation`` is the
    share of the training pool held out (seeded, stratified) before partitioning: no client trains
    on it, and the protocol's own choices read it instead of the test set (docs/methods.md).
    ``binarize`` t > 0 maps every feature to 1 where x >= t and 0 elsewhere (the generative task's
    binary data: digits' pixel >= 8 of 16 is t = 0.5).
    """

    name: str = "digits"
    num_clients: int = 10
    partition: str = "dirichlet"
    validation: float = 0.0
    binarize: float = 0.0
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    settings: dict[str, dict[str, Any]] = parts_field()

    def validate(self) -> None:
        require(self.num_clients >= 2, "num_clients", f"must be >= 2 (got {self.num_clients})")
        require(0 <= self.validation < 0.5, "validation",
                f"must be in [0, 0.5) (got {self.validation}); 0 holds no validation split out")
        require(0 <= self.binarize < 1, "binarize",
                f"must be in [0, 1) (got {self.binarize}); 0 keeps the features as they are, 0.5 maps x >= 0.5 to 1")
        for c in self.backdoor.clients:
            if isinstance(c, str):
                require(c in (*CLIENT_RULES, "forgotten"), "backdoor.clients",
                        f"{c!r} is neither a client id nor one of {', '.join((*CLIENT_RULES, 'forgotten'))}")
            else:
                require(0 <= c < self.num_clients, "backdoor.clients",
                        f"client id {c} is not in 0..{self.num_clients - 1}")


DILUTION_MODES = ("early", "late")


@dataclass
class DilutionConfig:
    """``[model.dilution]``: a fixed binary mask on the model's weight matrices (docs/methods.md, "Dilution").

    ``sparsity`` s is the share of each weight matrix (and conv kernel; never a bias) held at 0;
    0 keeps the model dense. ``mode = "early"`` draws the mask at random, seeded by the experiment
    seed, before training (the lottery-ticket setting); ``"late"`` prunes the trained weights by
    magnitude after round ``train.rounds − finetune_rounds`` and fine-tunes the remaining
    ``finetune_rounds`` rounds with the mask held (``train.rounds`` stays the total); an early
    mask ignores ``finetune_rounds`` (so a sweep over ``mode`` can keep one value) and its results'
    record leaves it out.
    """

    sparsity: float = 0.0
    mode: str = "early"
    finetune_rounds: int = 0

    def validate(self) -> None:
        require(0 <= self.sparsity < 1, "sparsity",
                f"must be in [0, 1) (got {self.sparsity}); the share of each weight matrix held at 0, 0 for dense")
        require(self.mode in DILUTION_MODES, "mode",
                f"must be 'early' (a random mask before training) or 'late' (magnitude pruning after training) "
                f"(got {self.mode!r})")
        require(self.finetune_rounds >= 0, "finetune_rounds", f"must be >= 0 (got {self.finetune_rounds})")

    @property
    def active(self) -> bool:
        """Whether the model is diluted at all (sparsity > 0)."""
        return self.sparsity > 0


@dataclass
class TaskConfig:
    """What is learnt and scored: ``classification`` (default) or ``generative``; the task's own settings
    are a table named after it (``[task.generative] cd_k = 1``)."""

    name: str = "classification"
    settings: dict[str, dict[str, Any]] = parts_field()


@dataclass
class ModelConfig:
    """The model; its own settings are a table named after it, e.g. ``[model.cnn] hidden = 64``.

    ``[model.dilution]`` is not a model's table: it dilutes whichever model is named (:class:`DilutionConfig`).
    """

    name: str = "cnn"
    dilution: DilutionConfig = field(default_factory=DilutionConfig)
    settings: dict[str, dict[str, Any]] = parts_field()


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

    def validate(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")
        require(self.local_epochs >= 1, "local_epochs", f"must be >= 1 (got {self.local_epochs})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0 (got {self.lr})")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1) (got {self.momentum})")
        require(math.isfinite(self.server_lr) and self.server_lr > 0, "server_lr",
                f"must be a finite number > 0 (got {self.server_lr})")
        require(0 < self.fraction_train <= 1, "fraction_train", f"must be in (0, 1] (got {self.fraction_train})")
        require(self.min_train_clients >= 0, "min_train_clients",
                f"must be >= 0 (got {self.min_train_clients}); 0 means every sampled client")


@dataclass
class StoreConfig:
    """What the server keeps of the clients' pseudo-gradients.

    The latest pseudo-gradient of every client is always kept. With ``history`` every round's is
    kept too, written to disk and cached in RAM up to ``ram_budget_mb``.
    """

    history: bool = False
    ram_budget_mb: float = 256.0
    dtype: str = "float32"

    def validate(self) -> None:
        require(self.dtype in ("float32", "float16"), "dtype", f"must be 'float32' or 'float16' (got {self.dtype!r})")
        require(self.ram_budget_mb >= 0, "ram_budget_mb", f"must be >= 0 (got {self.ram_budget_mb})")


@dataclass
class SimulationConfig:
    """Flower Simulation Engine (Ray backend) settings.

    ``num_cpus`` and ``num_gpus`` are what each client actor asks for; they are checked against the
    machine (or the cluster at ``ray_address``) before Ray starts. A client that fails in
    ``max_failed_rounds`` rounds in a row stops the run (its tracebacks are in failures.log); a
    client that does not answer within ``round_timeout_s`` seconds counts as failed in that round.
    With ``num_gpus`` > 0 (a share such as 0.5 puts two clients on one GPU) clients train on the
    GPU (:attr:`client_device`); GPU arithmetic is not the CPU's, so the device is part of a
    training run's settings record (``fedunlearn.provenance``).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str = ""
    checkpoint_every: int = 1
    max_failed_rounds: int = 3
    round_timeout_s: float = 3600.0

    def validate(self) -> None:
        require(self.num_cpus > 0, "num_cpus", f"must be > 0 (got {self.num_cpus})")
        require(self.num_gpus >= 0, "num_gpus", f"must be >= 0 (got {self.num_gpus})")
        require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1 (got {self.checkpoint_every})")
        require(self.max_failed_rounds >= 1, "max_failed_rounds", f"must be >= 1 (got {self.max_failed_rounds})")
        require(math.isfinite(self.round_timeout_s) and self.round_timeout_s > 0, "round_timeout_s",
                f"must be a finite number of seconds > 0 (got {self.round_timeout_s})")

    @property
    def client_device(self) -> str:
        """Where clients train: ``"cuda"`` when each actor is given a GPU or a share of one, else ``"cpu"``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


REQUEST_KINDS = ("client", "samples", "class")
SAMPLE_SELECTORS = ("poisoned",)  # beside a fraction (a float) and explicit indices (a list)


@dataclass
class ForgetRequest:
    """What to forget, after regular FedAvg round ``round`` (docs/methods.md, "Granularity").

    The request's kind follows from what it names:

    * ``client``: ``clients = [3]``, every sample of those clients; they leave the federation.
    * ``samples``: ``clients = [3]`` and ``samples``, a selector of those clients' train samples:
      ``"poisoned"`` (their backdoored samples), a fraction such as ``0.2`` (drawn with a
      Generator seeded by the seed, the client and the round) or a list of indices into the
      client's train data. The clients stay with the rest of their data.
    * ``class``: ``classes = [7]``, every sample with one of those labels on every client; a client
      whose data is all in those classes leaves.

    ``round = 0`` means after the last training round (``train.rounds``). Requests at earlier
    rounds form a sequence: each strategy unlearns at the first request's round, recovers, goes on
    with regular rounds over what remains up to the next request, and so on until
    ``train.rounds`` regular rounds have run in all. A client may be named by a rule
    (``"largest"``, ``"median"``, ``"random"``), resolved per seed on that seed's partition
    (:func:`fedunlearn.parts.for_seed`) and recorded in the seed's results.
    """

    clients: list[int | str] = field(default_factory=list)
    samples: str | float | list[int] = ""
    classes: list[int] = field(default_factory=list)
    round: int = 0

    @property
    def kind(self) -> str:
        """``"client"``, ``"samples"`` or ``"class"``."""
        if self.classes:
            return "class"
        return "samples" if self.samples != "" else "client"

    def describe(self) -> str:
        """A short human text: ``client 3``, ``client 3 samples poisoned``, ``class 7``."""
        if self.kind == "class":
            return f"class {' '.join(map(str, self.classes))}"
        who = f"client{'s' if len(self.clients) > 1 else ''} {' '.join(map(str, self.clients))}"
        if self.kind == "client":
            return who
        selector = self.samples if not isinstance(self.samples, list) else f"{len(self.samples)} indices"
        return f"{who} samples {selector}"


@dataclass
class ForgettingConfig:
    """Which unlearning strategies run, and the protocol they share (docs/methods.md, "Forgetting").

    Each strategy's own settings are a table named after it (``[forgetting.puf] eta = 20``);
    a strategy may also carry settings after ``@`` (``"puf@eta=40"``) to run beside the others, or
    be an inline table with a short label (``{ strategy = "puf", label = "puf-40", eta = 40 }``).

    Recovery is FedAvg over the remaining clients after the unlearning step. With
    ``recovery = "until-retrain"`` it stops at the first round whose test accuracy reaches the
    retrained model's less ``recovery_tolerance`` (the PUF authors' protocol has tolerance 0; on a
    test set of a few hundred images one standard error of accuracy is about 0.01, so a strict
    target is often hit or missed by noise), at most ``recovery_rounds`` rounds; with ``"fixed"``
    it always runs ``recovery_rounds`` rounds.

    Before any strategy runs, the original model must hold what is to be forgotten: test accuracy
    at least ``min_original_test_acc`` (it converged), accuracy on the data to forget at least
    ``min_original_forget_acc`` (it learnt it: a class, samples, a client) and, with a backdoor,
    attack success rate at least ``min_original_backdoor_asr`` (it learnt the backdoor); otherwise the comparison could
    not tell strategies apart and the run stops with exit code 2. With ``check_separation``
    the retrained model must also fall short of the probe's threshold on the forgotten clients
    (else the original holds nothing measurable that retraining removes).
    """

    strategies: list[Any] = field(default_factory=lambda: ["retrain", "natural", "puf", "puf-ieu"])
    recovery: str = "until-retrain"
    recovery_rounds: int = 30
    recovery_tolerance: float = 0.01
    min_original_test_acc: float = 0.5
    min_original_forget_acc: float = 0.5
    min_original_backdoor_asr: float = 0.5
    check_separation: bool = True
    settings: dict[str, dict[str, Any]] = parts_field()

    def validate(self) -> None:
        for entry in self.strategies:
            require(isinstance(entry, str) or isinstance(entry, dict) and isinstance(entry.get("strategy"), str),
                    "strategies", f"{entry!r} is neither a spec (\"puf@eta=40\") nor a table with a strategy "
                    "(e.g. { strategy = \"puf\", label = \"puf-40\", eta = 40 })")
        require(self.recovery in ("until-retrain", "fixed"), "recovery",
                f"must be 'until-retrain' or 'fixed' (got {self.recovery!r})")
        require(self.recovery_rounds >= 0, "recovery_rounds", f"must be >= 0 (got {self.recovery_rounds})")
        require(0 <= self.recovery_tolerance < 1, "recovery_tolerance",
                f"must be in [0, 1) (got {self.recovery_tolerance})")


@dataclass
class ProbeConfig:
    """The relearning-delay probe (docs/methods.md, "Evaluation").

    From each model, FedAvg rounds run with the forgotten clients re-added (``modes`` has ``"all"``:
    every client) and the forget metric is measured after every round; the delay is the first
    round at which it reaches (1 − ``alpha``) times the original model's value ((1 + alpha) for a
    loss), capped at ``max_rounds`` (censored beyond). Mode ``"alone"`` lets the forgotten clients
    train alone on their forget data and counts local SGD steps at ``alone_lr`` (a whole local run
    relearns a backdoor at once): one Flower round per step (client behaviour ``probe``), capped at
    ``alone_max_steps``. ``metric = "auto"`` is the task's default: for classification ``backdoor``
    (attack success rate) when the experiment has a backdoor, else ``forget_acc``; for the
    generative task ``forget_ll``, the normalised forget log-likelihood.
    """

    enabled: bool = True
    metric: str = "auto"
    modes: list[str] = field(default_factory=lambda: ["all"])
    max_rounds: int = 10
    alpha: float = 0.05
    alone_lr: float = 0.002
    alone_max_steps: int = 30

    def validate(self) -> None:
        require(self.metric in ("auto", "forget_acc", "forget_loss", "backdoor", "forget_ll"), "metric",
                f"must be auto, forget_acc, forget_loss, backdoor or forget_ll (got {self.metric!r})")
        require(bool(self.modes) and all(m in ("all", "alone") for m in self.modes), "modes",
                f"must list 'all' and/or 'alone' (got {self.modes})")
        require(self.max_rounds >= 1, "max_rounds", f"must be >= 1 (got {self.max_rounds})")
        require(0 <= self.alpha < 1, "alpha", f"must be in [0, 1) (got {self.alpha})")
        require(self.alone_lr > 0, "alone_lr", f"must be > 0 (got {self.alone_lr})")
        require(self.alone_max_steps >= 1, "alone_max_steps", f"must be >= 1 (got {self.alone_max_steps})")


@dataclass
class ExperimentConfig:
    """A whole experiment; ``seed`` drives partitions, init, sampling and local training.

    ``sweep`` maps dotted keys to lists of values (``"model.dilution.sparsity" = [0, 0.5]``): the
    comparison runs once per combination (:mod:`fedunlearn.phases.sweep`).
    """

    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    forget: list[ForgetRequest] = field(default_factory=list)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def validate(self) -> None:
        for key, values in self.sweep.items():
            require(bool(values), f"sweep.{key}", "lists no value; give at least one, e.g. [0.5, 0.8]")
            require(key.split(".")[0] not in ("seed", "sweep", "simulation") and key != "data.num_clients",
                    f"sweep.{key}", "cannot be swept (one federation serves every point); sweep a setting of "
                    "data, model, train, forgetting, probe or task")
        require(self.seed >= 0, "seed", f"must be >= 0 (got {self.seed}); seeds are non-negative integers")
        require(self.train.min_train_clients <= self.data.num_clients, "train.min_train_clients",
                f"must be in 0..{self.data.num_clients} (got {self.train.min_train_clients})")
        require(self.probe.metric != "backdoor" or self.has_trigger(), "probe.metric",
                "backdoor needs data.backdoor.clients with a trigger (patch_size > 0); use auto (the task's "
                "forget metric: forget_acc for a classifier, forget_ll for the generative task)")
        validate_requests(self.forget_requests(), self.data.num_clients, self.train.rounds, "forget")
        dilution = self.model.dilution
        require(not dilution.active or dilution.mode != "late" or dilution.finetune_rounds < self.train.rounds,
                "model.dilution.finetune_rounds", f"must be < train.rounds = {self.train.rounds} (got "
                f"{dilution.finetune_rounds}): the pruning comes after round train.rounds − finetune_rounds >= 1")

    def has_trigger(self) -> bool:
        """Whether some clients carry a triggered backdoor (so an attack success rate exists)."""
        return bool(self.data.backdoor.clients) and self.data.backdoor.patch_size > 0

    def forget_requests(self) -> list[ForgetRequest]:
        """The requests in round order, ``round = 0`` resolved to the last training round."""
        resolved = [dataclasses.replace(r, clients=list(r.clients), round=r.round or self.train.rounds)
                    for r in self.forget]
        return sorted(resolved, key=lambda r: r.round)

    def forgotten_clients(self) -> list[int]:
        """Every client a request names (client and samples kinds), sorted (rules resolved first)."""
        if any(isinstance(c, str) for r in self.forget for c in r.clients):
            raise ValueError("forget requests name clients by rule; resolve them with fedunlearn.parts.for_seed")
        return sorted({c for r in self.forget for c in r.clients})


def _request_field(requests: list[ForgetRequest], i: int, key: str, where: str) -> str:
    return f"{where}[{i}].{key}" if len(requests) > 1 or where == "forget" else where


def _validate_selector(r: ForgetRequest, name: str) -> None:
    s = r.samples
    if isinstance(s, str):
        if s not in SAMPLE_SELECTORS:
            raise ConfigError(f"{name}: {s!r} is not a selector; use \"poisoned\", a fraction such as 0.2, or a "
                              "list of sample indices")
    elif isinstance(s, float):
        if not 0 < s < 1:
            raise ConfigError(f"{name}: the fraction {s} is not in (0, 1); forget the whole client with a client "
                              "request (no samples key)")
    else:
        if not s:
            raise ConfigError(f"{name}: an empty list of indices; name at least one sample")
        if len(r.clients) != 1:
            raise ConfigError(f"{name}: indices name the samples of one client; list exactly one client")
        if min(s) < 0 or len(set(s)) != len(s):
            raise ConfigError(f"{name}: indices must be distinct and >= 0 (got {s})")


def validate_requests(requests: list[ForgetRequest], num_clients: int, last_round: int, where: str) -> None:
    """Guards shared by the TOML ``[[forget]]`` tables and the ``forget`` command's flags.

    What needs the data (a class the data set has, an index a client holds, poisoned samples to
    select) is checked when the forget sets are built (:mod:`fedunlearn.data.forget_sets`).
    """
    gone: set[int] = set()
    for i, r in enumerate(requests):
        clients = _request_field(requests, i, "clients", where)
        if r.classes:
            if r.clients:
                raise ConfigError(f"{clients}: a class request removes its classes from every client; drop clients "
                                  "(or make it a separate request)")
            if r.samples != "":
                raise ConfigError(f"{_request_field(requests, i, 'samples', where)}: a class request selects by "
                                  "label; drop samples")
            name = _request_field(requests, i, "classes", where)
            if min(r.classes) < 0 or len(set(r.classes)) != len(r.classes):
                raise ConfigError(f"{name}: classes must be distinct labels >= 0 (got {r.classes})")
        elif not r.clients:
            raise ConfigError(f"{clients}: empty; name at least one client id (or classes = [...] for a class)")
        if r.samples != "":
            _validate_selector(r, _request_field(requests, i, "samples", where))
        ids = [c for c in r.clients if not isinstance(c, str)]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{clients}: a client is named twice in {r.clients}; name each client once")
        for c in r.clients:
            if isinstance(c, str):
                if c not in CLIENT_RULES:
                    raise ConfigError(f"{clients}: {c!r} is neither a client id nor a rule; use an id or one of "
                                      f"{', '.join(CLIENT_RULES)}")
                continue
            if not 0 <= c < num_clients:
                raise ConfigError(f"{clients}: unknown client id {c}; the federation has clients "
                                  f"0..{num_clients - 1}")
            if c in gone:
                raise ConfigError(f"{clients}: client {c} is already forgotten by an earlier request")
            if r.kind == "client":
                gone.add(c)
        if not 1 <= r.round <= last_round:
            raise ConfigError(f"{where}[{i}].round: {r.round} is not a round the run reached (1..{last_round}); "
                              "use 0 for the last training round")
    if len(gone) >= num_clients and requests:
        raise ConfigError(f"{where}: the requests forget every one of the {num_clients} clients; "
                          "keep at least one client in the federation")


def request_from_flags(clients: list[int], samples: str | None, classes: list[int]) -> ForgetRequest:
    """The one request the ``forget`` and ``probe`` commands' flags describe (round 0: the last round).

    ``--client 3`` (repeatable), ``--samples 3:poisoned`` / ``3:0.2`` / ``3:5,9,12`` or ``--class 7``
    (repeatable); one kind per command.
    """
    given = [flag for flag, used in (("--client", clients), ("--samples", samples), ("--class", classes)) if used]
    if len(given) != 1:
        raise ConfigError(f"{' and '.join(given) or '--client'}: name what to forget with exactly one of --client ID, "
                          "--samples ID:poisoned|FRACTION|I,J,K or --class LABEL")
    if classes:
        return ForgetRequest(classes=sorted(classes))
    if clients:
        return ForgetRequest(sorted(clients))
    client, _, selector = samples.partition(":")
    try:
        pid = int(client)
        value = (selector if selector == "poisoned" else float(selector) if "." in selector
                 else [int(i) for i in selector.split(",")])
    except ValueError:
        raise ConfigError(f"--samples {samples!r}: write CLIENT:poisoned, CLIENT:FRACTION (e.g. 3:0.2) or "
                          "CLIENT:I,J,K (sample indices)") from None
    return ForgetRequest([pid], samples=value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.sub=value`` as (["key", "sub"], value parsed as a TOML literal)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.rounds=20")
    key, raw = text.split("=", 1)
    try:  # a TOML dotted key, so a quoted part may hold dots: model."mylab.nets:resnet18".width
        node, keys = tomllib.loads(f"{key.strip()} = 0"), []
        while isinstance(node, dict):
            (k, node), = node.items()
            keys.append(k)
    except (tomllib.TOMLDecodeError, ValueError):
        raise ConfigError(f"--set {text!r}: {key.strip()!r} is not a key; write e.g. train.rounds=20") from None
    return keys, parse_value(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as TOML literals) to a raw TOML dict."""
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {part} is not a table")
            node = child
        node[keys[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a TOML-shaped dict (no registry lookups)."""
    return build(ExperimentConfig, raw, "")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a TOML experiment file (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"experiment file {str(p)!r} not found; pass the path of a TOML file")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not UTF-8 text (byte {err.start}); save it as UTF-8, as TOML requires") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML ({err}); fix the syntax") from None
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain TOML-shaped dict (the inverse of :func:`config_from_dict`)."""
    return as_dict(cfg)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else '"' + key.replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. a labelled strategy entry
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def to_toml(raw: dict[str, Any], prefix: str = "") -> str:
    """Serialise a config dict as TOML: scalars, then a table per dict, an array of tables per list of dicts."""

    def is_table_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in raw.items()
             if not isinstance(v, dict) and not is_table_list(v)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in raw.items():
        name = f"{prefix}{_toml_key(k)}"
        if isinstance(v, dict):
            text += f"\n[{name}]\n" + to_toml(v, f"{name}.")
        elif is_table_list(v):
            text += "".join(f"\n[[{name}]]\n" + to_toml(item, f"{name}.") for item in v)
    return text
