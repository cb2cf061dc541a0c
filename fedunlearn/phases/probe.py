"""The relearning-delay probe: relearn the forgotten clients from a model and watch the forget metric.

Mode ``all``: Flower FedAvg rounds over every client (the forgotten ones re-added), the same local
recipe, the metric after each round. Mode ``alone``: the forgotten clients (the requests' holders)
alone, on their forget samples, one Flower round per local SGD step at ``probe.alone_lr`` (a whole
local run is too coarse to see a backdoor come back): each takes one step of its own continuous
SGD run from the global model (:mod:`fedunlearn.clients.probe`: same batch order, momentum carried
in its node's state), FedAvg over them, the metric after each step. Both run through
:func:`~fedunlearn.evaluation.relearning.relearning_probe` (Flower's ``Strategy.start``). Every
model probed in one comparison starts its probe on the same clock, so all get the same client
randomness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord

from fedunlearn.arrays import Weights
from fedunlearn.class_unlearning import split_filter
from fedunlearn.config import (
    ConfigError,
    ExperimentConfig,
    ForgetRequest,
    config_from_dict,
    config_to_dict,
    load_config,
    to_toml,
    validate_requests,
)
from fedunlearn.data import federated_data
from fedunlearn.data.forget_sets import ForgetSets, requests_json
from fedunlearn.dilution import Mask, load_mask
from fedunlearn.evaluation.probe import ProbeResult, threshold
from fedunlearn.evaluation.relearning import ProbeDivergedError, relearning_probe
from fedunlearn.evaluation.scorer import EvaluationSets
from fedunlearn.flower.client_app import client_seed
from fedunlearn.flower.runtime import Federation
from fedunlearn.io import atomic_write_text
from fedunlearn.provenance import Piece
from fedunlearn.results import RunDir, csv_text
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg
from fedunlearn.strategies.dilution import diluted
from fedunlearn.strategies.fedavg import FORGET, local_recipe
from fedunlearn.tasks import probe_metric, task_of

PROBE_CLOCK = 100_000  # probe rounds are numbered from here, apart from every training round
PROBE_COLUMNS = ["model", "step", "value", "threshold", "unit", "metric"]


ProbeValue = Callable[[Weights], float]


def relearning_lr(cfg: ExperimentConfig, mode: str) -> tuple[str, float]:
    """The setting a probe mode relearns with, and its value: training's recipe (``all``) or the alone step."""
    return ("train.lr", cfg.train.lr) if mode == "all" else ("probe.alone_lr", cfg.probe.alone_lr)


def probe_all(fed: Federation, cfg: ExperimentConfig, scorer: EvaluationSets, weights: Weights, value: ProbeValue,
              tau: float, mask: Mask | None = None) -> ProbeResult:
    """FedAvg over every client for ``probe.max_rounds`` rounds (:func:`relearning_probe`, as any ServerApp);
    a diluted model relearns with its ``mask`` held."""
    metric = probe_metric(cfg)
    strategy = RecordingFedAvg.from_config(cfg, PseudoGradientStore(), fed.node_of, range(cfg.data.num_clients),
                                           round_offset=PROBE_CLOCK)
    return relearning_probe(fed.watched("probe"), diluted(strategy, mask), ArrayRecord(weights),
                            lambda arrays: value(arrays.to_numpy_ndarrays()),
                            metric=metric, tau=tau, max_rounds=cfg.probe.max_rounds, timeout=fed.timeout)


class ProbeAloneRound(RecordingFedAvg):
    """One step of the ``alone`` probe: the holders take one SGD step each on their forget samples.

    Round r of ``Strategy.start`` is step r − 1 of every holder's continuous local run (behaviour
    ``probe``); the holders' models are averaged by their forget-sample counts, in client order.
    """

    behaviour = "probe"

    def __init__(self, *args, holders: Sequence[int], requests: Sequence[ForgetRequest], lr: float, steps: int,
                 probe_id: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.holders, self.requests = sorted(holders), list(requests)
        self.lr, self.steps, self.probe_id = lr, steps, probe_id

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        return [(h, FORGET) for h in self.holders]

    def client_config(self, partition_id: int, config: ConfigRecord) -> ConfigRecord:
        step = int(config["server-round"]) - self.round_offset - 1
        # each holder's run is seeded as its local run in the probe's first round would be
        config.update({"only": requests_json(self.requests), "probe-step": step, "probe-steps": self.steps,
                       "probe-lr": self.lr, "probe-id": self.probe_id,
                       "probe-seed": client_seed(self.seed, self.clock(1), partition_id)})
        return config


def probe_alone(fed: Federation, cfg: ExperimentConfig, scorer: EvaluationSets, weights: Weights, value: ProbeValue,
                tau: float, mask: Mask | None = None) -> ProbeResult:
    """The forgotten clients alone, one Flower round per SGD step, for ``probe.alone_max_steps`` steps
    (a diluted model's ``mask`` held)."""
    metric = probe_metric(cfg)
    holders = sorted({c for h in ForgetSets.of(scorer.data, scorer.requests, cfg.seed).holders for c in h})
    steps = cfg.probe.alone_max_steps
    strategy = ProbeAloneRound(PseudoGradientStore(), node_of=fed.node_of, participants=holders, seed=cfg.seed,
                               base_config=local_recipe(cfg), min_train_nodes=0, round_offset=PROBE_CLOCK,
                               holders=holders, requests=scorer.requests, lr=cfg.probe.alone_lr, steps=steps,
                               probe_id=uuid.uuid4().hex)
    return relearning_probe(fed.watched("probe"), diluted(strategy, mask), ArrayRecord(weights),
                            lambda arrays: value(arrays.to_numpy_ndarrays()),
                            metric=metric, tau=tau, max_rounds=steps, timeout=fed.timeout, unit="steps")


def not_measurable(cfg: ExperimentConfig, mode: str, metric: str) -> ProbeResult:
    """The curve of a metric undefined from the start (NaN at the original: e.g. the generative r when the
    original and the reference do not separate, docs/methods.md, "Generative task"): the probe's length of
    NaN, written n/a, without running rounds whose every value would be NaN."""
    cap, unit = (cfg.probe.max_rounds, "rounds") if mode == "all" else (cfg.probe.alone_max_steps, "steps")
    return ProbeResult(metric, unit, [float("nan")] * (cap + 1), float("nan"))


class ProbeCache:
    """Finished probes kept in their pieces' folders (``result.json``), reused while their settings match."""

    def __init__(self, pieces: dict[tuple[str, str], Piece]) -> None:
        self.pieces = pieces

    def get(self, mode: str, name: str) -> ProbeResult | None:
        piece = self.pieces[mode, name]
        if not piece.holds("result.json"):
            return None
        return ProbeResult(**json.loads((piece.path / "result.json").read_text()))

    def put(self, mode: str, name: str, result: ProbeResult, log=print) -> None:
        piece = self.pieces[mode, name]
        piece.claim(str(piece.path), log)
        atomic_write_text(piece.path / "result.json", json.dumps(dataclasses.asdict(result)))


def probe_models(fed: Federation, cfg: ExperimentConfig, scorer: EvaluationSets, original: Weights,
                 models: dict[str, Weights], log=print, cache: ProbeCache | None = None,
                 reference: Weights | None = None, masks: dict[str, Mask | None] | None = None
                 ) -> dict[str, dict[str, ProbeResult]]:
    """Probe every model in every configured mode: {mode: {name: result}}; ``cache`` keeps finished ones.

    ``reference`` is the retrained model a task's forget metric may be normalised by (the
    generative task's forget likelihood); the classification task's metrics do not read it. A
    diluted model relearns with its own mask held (``masks`` by model name: the one its folder
    keeps, :func:`fedunlearn.dilution.load_mask`; a late retrain's is not the original's).

    A model with a server-side output filter is probed as its network: relearning trains the
    network, and the filter would hide the forget classes however much of them came back.
    """
    metric = probe_metric(cfg)
    models = {name: split_filter(w, scorer.num_arrays)[0] for name, w in models.items()}
    value = scorer.probe_value(metric, original, original if reference is None else reference)
    tau = threshold(metric, value(original), cfg.probe.alpha)
    if math.isnan(tau):
        log(f"  probe: {metric} is not measurable (the original and the reference do not differ by probe.alpha "
            "on the forget set): every delay is n/a, no probe rounds run")
    results: dict[str, dict[str, ProbeResult]] = {}
    for mode in cfg.probe.modes:
        results[mode] = {}
        for name, weights in models.items():
            res = cache.get(mode, name) if cache else None
            if res is not None:
                results[mode][name] = res
                log(f"  probe [{mode}] {name}: already done with these settings, reusing it")
                continue
            if math.isnan(tau):
                results[mode][name] = not_measurable(cfg, mode, metric)
                continue
            try:
                res = (probe_all if mode == "all" else probe_alone)(fed, cfg, scorer, weights, value, tau,
                                                                    (masks or {}).get(name))
            except ProbeDivergedError as err:
                setting, lr = relearning_lr(cfg, mode)
                raise ConfigError(f"{setting}: the {mode} probe of {name} left NaN or Inf in the weights after "
                                  f"{err.rounds} {err.unit} ({setting} = {lr:g}); lower {setting} so relearning "
                                  "does not diverge") from None
            results[mode][name] = res
            if cache:
                cache.put(mode, name, res, log)
            log(f"  probe [{mode}] {name}: {metric} {res.curve[0]:.3f} -> {res.curve[-1]:.3f}, "
                f"delay {res.delay_text} {res.unit} (threshold {tau:.3f})")
    return results


def write_probes(out: Path, results: dict[str, dict[str, ProbeResult]]) -> None:
    """The curves of every mode to ``out/probe/MODE.csv``."""
    for mode, by_model in results.items():
        rows = [{"model": name, "step": i, "value": v, "threshold": r.tau, "unit": r.unit, "metric": r.metric}
                for name, r in by_model.items() for i, v in enumerate(r.curve)]
        atomic_write_text(out / "probe" / f"{mode}.csv", csv_text(rows, PROBE_COLUMNS))


@dataclass
class ProbeJob:
    """``fedunlearn probe``: a trained run's model as the original, and the models to probe against it."""

    cfg: ExperimentConfig
    scorer: EvaluationSets
    original: Weights
    models: dict[str, Weights]
    masks: dict[str, Mask | None] = field(default_factory=dict)
    reference: Weights | None = None

    def run(self, fed: Federation, log=print) -> dict[str, dict[str, ProbeResult]]:
        return probe_models(fed, self.cfg, self.scorer, self.original, self.models, log=log, masks=self.masks,
                            reference=self.reference)

    def write(self, out: Path, results: dict[str, dict[str, ProbeResult]]) -> None:
        """The curves (:func:`write_probes`) and, beside each mode's, ``probe/MODE.toml``: the experiment as
        this probe ran it (its request, metric, mode, cap), so the curves say what they were computed with."""
        write_probes(out, results)
        for mode in results:
            atomic_write_text(out / "probe" / f"{mode}.toml", to_toml(config_to_dict(self.cfg)))


def _checkpoint_of(path: str, flag: str) -> Weights:
    """The model a strategy folder or training run at ``path`` keeps (ConfigError naming ``flag`` if none)."""
    model = RunDir(path)
    if not model.checkpoint.exists():
        raise ConfigError(f"{flag}: {path} holds no checkpoint/global.npz; pass a strategy folder "
                          "(e.g. RUN/forget-puf/strategies/puf) or a training run")
    return model.load_checkpoint()[0]


def _check_reference(cfg: ExperimentConfig, reference_dir: str | None) -> None:
    """A metric normalised by the retrained model (the generative task's r, docs/methods.md, "Generative
    task") needs ``--reference``, as ``fedunlearn run`` normalises by its retrain; any other refuses it."""
    metric = probe_metric(cfg)
    normalised = metric in task_of(cfg).normalised_probe_metrics
    if normalised and reference_dir is None:
        raise ConfigError(f"--reference: the probe metric {metric} is normalised by the retrained model (0 = retrain, "
                          "1 = original); pass its folder, e.g. --reference RUN/forget-retrain/strategies/retrain "
                          "(written by fedunlearn forget RUN with the same request and --strategy retrain)")
    if not normalised and reference_dir is not None:
        raise ConfigError(f"--reference: the probe metric {metric} reads no reference model; remove --reference")


def prepare_probe(run_dir: str | Path, request: ForgetRequest, metric: str, mode: str, max_rounds: int | None,
                  model_dirs: list[str], reference_dir: str | None = None) -> ProbeJob:
    """Check a probe request against a trained run; the original is that run's model, ``reference_dir``
    the retrained model a normalised probe metric needs."""
    run = RunDir.trained(run_dir)
    cfg = load_config(run.config)
    request = dataclasses.replace(request, round=1)
    validate_requests([request], cfg.data.num_clients, 1, f"--{request.kind}")
    probe = dataclasses.replace(cfg.probe, metric=metric, modes=[mode], max_rounds=max_rounds or cfg.probe.max_rounds)
    raw = config_to_dict(dataclasses.replace(cfg, probe=probe, forget=[request]))
    try:
        cfg = config_from_dict(raw)  # re-validated with this command's settings
        task_of(cfg).check(cfg, [])
    except ConfigError as err:
        raise ConfigError(str(err).replace("probe.metric:", "--metric:").replace("probe.max_rounds:", "--max-rounds:")) from None
    _check_reference(cfg, reference_dir)
    original, _ = run.load_checkpoint()
    models, masks = {"original": original}, {"original": load_mask(run.path)}
    for path in model_dirs:
        models[Path(path).name] = _checkpoint_of(path, "--model")
        masks[Path(path).name] = load_mask(path)
    reference = _checkpoint_of(reference_dir, "--reference") if reference_dir is not None else None
    return ProbeJob(cfg, task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed), [request]), original, models,
                    masks, reference)
