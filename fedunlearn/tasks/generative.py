"""The generative task: an energy model (the Bernoulli RBM) trained by contrastive divergence.

Metrics (docs/methods.md, "Generative task"), each also as its gap to the retrained model: the
mean log-likelihood log p(v) of the forget, retain, kept, validation and test data (the test data
of the remaining classes; log Z exact for up to ``exact_max_hidden`` hidden units, annealed
importance sampling above), the **forget gap** LL(forget) − LL(test), the **free-energy gap**
mean F(forget) − mean F(test), and the share of generated samples an auxiliary classifier
assigns to the forgotten classes, with the entropy of that class histogram. The relearning probe
watches the normalised forget likelihood r(M) = (LL_F(M) − LL_F(ref)) / (LL_F(original) − LL_F(ref)):
0 at the reference, 1 at the original.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fedunlearn.arrays import Weights
from fedunlearn.config import ConfigError, DataConfig, ExperimentConfig, ForgetRequest
from fedunlearn.data import FederatedData, data_key, federated_data
from fedunlearn.evaluation.metrics import relative_distance
from fedunlearn.evaluation.scorer import EvaluationSets
from fedunlearn.io import atomic_savez
from fedunlearn.models import model_part
from fedunlearn.rbm import (
    MAX_EXACT_HIDDEN,
    ContrastiveDivergence,
    base_rate_visible_bias,
    log_likelihood,
    log_partition_ais,
    log_partition_exact,
    sample,
)
from fedunlearn.settings import build, require
from fedunlearn.tasks.base import Task, is_energy_model
from fedunlearn.training import Objective, set_weights

GENERATIVE_METRICS = ["test_ll", "val_ll", "retain_ll", "forget_ll", "kept_ll", "forget_test_ll", "forget_gap",
                      "free_energy_gap", "gen_forget_share", "gen_entropy", "aux_test_acc"]
# aux_test_acc is the auxiliary classifier's own test accuracy, the same for every model scored: a gap
# to the reference would be 0 by construction, so it gets none
MODEL_FREE_METRICS = frozenset({"aux_test_acc"})
SAMPLE_STREAM, AIS_STREAM = 0x5A3, 0xA15  # the generated samples' and AIS's streams, apart from every other


@dataclass
class GenerativeSettings:
    """``[task.generative]``: contrastive divergence, the partition function and the generated samples.

    ``cd_k`` Gibbs steps per batch, ``persistent`` chains carried across the batches of a local run
    (PCD); ``exact_max_hidden``: log Z by enumeration up to this many hidden units, else AIS with
    ``ais_runs`` runs of ``ais_steps`` temperatures; ``samples`` Gibbs chains from uniform random
    states run ``burn_in`` steps for the generated-class share.
    """

    cd_k: int = 1
    persistent: bool = True
    exact_max_hidden: int = 20
    ais_runs: int = 100
    ais_steps: int = 2000
    samples: int = 1000
    burn_in: int = 1000

    def validate(self) -> None:
        require(self.cd_k >= 1, "cd_k", f"must be >= 1 (got {self.cd_k})")
        require(0 <= self.exact_max_hidden <= MAX_EXACT_HIDDEN, "exact_max_hidden",
                f"must be in 0..{MAX_EXACT_HIDDEN} (got {self.exact_max_hidden}): enumeration costs 2^hidden states")
        require(self.ais_runs >= 2, "ais_runs", f"must be >= 2 (got {self.ais_runs})")
        require(self.ais_steps >= 10, "ais_steps", f"must be >= 10 (got {self.ais_steps})")
        require(self.samples >= 10, "samples", f"must be >= 10 (got {self.samples})")
        require(self.burn_in >= 1, "burn_in", f"must be >= 1 (got {self.burn_in})")


class GenerativeTask(Task):
    """Binary data is modelled, not labelled: local runs minimise the CD-k surrogate of an energy model."""

    classifier = False
    probe_metrics = ("forget_ll",)
    normalised_probe_metrics = ("forget_ll",)  # r(M) = 0 at the reference
    Settings = GenerativeSettings

    def objective(self, seed: int) -> Objective:
        cd = ContrastiveDivergence(self.settings.cd_k, self.settings.persistent)
        draws = torch.Generator().manual_seed(seed)
        return lambda model, x, y: cd(model, x, draws)

    def scorer(self, cfg: ExperimentConfig, data: FederatedData,
               requests: Sequence[ForgetRequest] = ()) -> GenerativeScorer:
        return GenerativeScorer(cfg, data, requests, self.settings)

    def report_notes(self, cfg: ExperimentConfig) -> list[str]:
        """Whether the log-likelihoods are exact or AIS estimates (a user's energy model may not say how
        many hidden units it has: then the rule is stated)."""
        s = self.settings
        hidden = getattr(model_part(cfg.model).build_settings(cfg.model.settings, "model."), "hidden", None)
        exact = "exact (log Z by enumeration of the hidden states)"
        ais = f"AIS estimates (log Z from {s.ais_runs} runs of {s.ais_steps} temperatures)"
        how = (f"{exact} for models with up to {s.exact_max_hidden} hidden units, {ais} above" if hidden is None
               else exact if hidden <= s.exact_max_hidden else ais)
        return [f"Log-likelihoods (nats per sample) are {how}; docs/methods.md, \"Generative task\"."]

    def check(self, cfg: ExperimentConfig, parts) -> None:
        super().check(cfg, parts)
        if not is_energy_model(cfg):
            raise ConfigError(f"model.name: the generative task needs an energy model with free_energy (rbm), "
                              f"{cfg.model.name!r} has none; set model.name = \"rbm\"")
        if cfg.data.binarize <= 0:
            raise ConfigError("data.binarize: the generative task models binary data; set data.binarize = 0.5 "
                              "(digits: pixel >= 8 of 16)")


def stream(seed: int, name: int) -> int:
    """The seed of one of the scorer's random streams (AIS, generated samples), apart from the model's init."""
    return int(np.random.SeedSequence([seed, name]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def auxiliary_classifier(key: str):
    """A logistic regression trained once, centrally, on every client's train data of the federation ``key``
    (its data config and seed); returns (classifier, test accuracy)."""
    raw = json.loads(key)
    data = federated_data(build(DataConfig, raw["data"], "data."), raw["seed"])
    x = np.concatenate([c.x_train.reshape(len(c.x_train), -1) for c in data.clients])
    y = np.concatenate([c.y_train for c in data.clients])
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    return clf, float(clf.score(data.x_test.reshape(len(data.x_test), -1), data.y_test))


class GenerativeScorer(EvaluationSets):
    """Log-likelihoods, free energies and generated samples of energy models on the evaluation sets."""

    round_columns = ["test_ll", "forget_ll", "forget_gap"]

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, requests: Sequence[ForgetRequest],
                 settings: GenerativeSettings) -> None:
        super().__init__(cfg, data, requests, calibration=False)
        self.settings = settings
        self._generated: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- likelihoods ----------------------------------------------------------------------
    def log_z(self, weights: Weights) -> float:
        """log Z of ``weights``: exact up to ``exact_max_hidden`` hidden units, AIS (seeded) above."""
        set_weights(self.model, weights)
        if self.model.hidden <= self.settings.exact_max_hidden:
            return log_partition_exact(self.model)
        draws = torch.Generator().manual_seed(stream(self.cfg.seed, AIS_STREAM))
        base = torch.from_numpy(np.concatenate([c.x_train for c in self.data.clients]))
        return log_partition_ais(self.model, runs=self.settings.ais_runs, steps=self.settings.ais_steps,
                                 generator=draws, base_visible_bias=base_rate_visible_bias(base))

    def mean_ll(self, x: np.ndarray, log_z: float) -> float:
        """Mean log p(v) over ``x`` under the model's current weights (NaN for no rows)."""
        if len(x) == 0:
            return float("nan")
        with torch.no_grad():
            return float(log_likelihood(self.model, torch.from_numpy(x), log_z).mean())

    def mean_free_energy(self, x: np.ndarray) -> float:
        """Mean F(v) over ``x`` under the model's current weights (NaN for no rows)."""
        if len(x) == 0:
            return float("nan")
        with torch.no_grad():
            return float(self.model.free_energy(torch.from_numpy(x)).double().mean())

    def forget_ll(self, weights: Weights) -> float:
        return self.mean_ll(self.x_forget, self.log_z(weights))

    # -- the scorer interface -------------------------------------------------------------
    def round_metrics(self, weights: Weights) -> dict[str, float]:
        """Test and forget log-likelihood and the forget gap."""
        return self._round_metrics(self.log_z(weights))

    def _round_metrics(self, log_z: float) -> dict[str, float]:
        test, forget = self.mean_ll(self.x_test, log_z), self.mean_ll(self.x_forget, log_z)
        return {"test_ll": test, "forget_ll": forget, "forget_gap": forget - test}

    def summary_metrics(self, weights: Weights) -> dict[str, float]:
        """Round metrics, the other sets' log-likelihoods, the free-energy gap and the generated-class share."""
        log_z = self.log_z(weights)
        out = self._round_metrics(log_z)
        out.update({"val_ll": self.mean_ll(self.x_val, log_z), "retain_ll": self.mean_ll(self.x_retain, log_z),
                    "kept_ll": self.mean_ll(self.x_kept, log_z),
                    "forget_test_ll": self.mean_ll(self.x_forget_test, log_z),
                    "free_energy_gap": self.mean_free_energy(self.x_forget) - self.mean_free_energy(self.x_test)})
        out.update(self.generated_share(weights))
        return out

    def generated(self, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
        """``samples`` generated images (Gibbs chains from uniform random states, seeded) and their
        auxiliary-classifier labels; kept per weights (the summary and the samples figure read them)."""
        key = hashlib.sha1(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest()
        if key not in self._generated:
            self._generated[key] = self._generate(weights)
        return self._generated[key]

    def _generate(self, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
        set_weights(self.model, weights)
        draws = torch.Generator().manual_seed(stream(self.cfg.seed, SAMPLE_STREAM))
        v = sample(self.model, self.settings.samples, self.settings.burn_in, draws).numpy().astype(np.float32)
        clf, _ = auxiliary_classifier(data_key(self.cfg.data, self.cfg.seed))
        return v.reshape(len(v), *self.data.input_shape), clf.predict(v).astype(np.int64)

    def generated_share(self, weights: Weights) -> dict[str, float]:
        """The forgotten classes' share of the generated samples (NaN without class requests), the class
        histogram's entropy in nats, and the auxiliary classifier's test accuracy."""
        _, labels = self.generated(weights)
        p = np.bincount(labels, minlength=self.data.num_classes) / len(labels)
        share = float(np.isin(labels, self.forget_classes).mean()) if self.forget_classes else float("nan")
        _, acc = auxiliary_classifier(data_key(self.cfg.data, self.cfg.seed))
        return {"gen_forget_share": share, "gen_entropy": float(-(p[p > 0] * np.log(p[p > 0])).sum()),
                "aux_test_acc": acc}

    @property
    def selection_metric(self) -> str:
        """What the protocol's own choices compare (the recovery stop): ``val_ll`` with a validation
        split, else ``test_ll`` (mean nats per sample; higher is better)."""
        return "val_ll" if self.has_validation else "test_ll"

    def selection_score(self, weights: Weights) -> float:
        return self.mean_ll(self.x_val if self.has_validation else self.x_test, self.log_z(weights))

    def evaluate(self, weights: Weights, reference: Weights) -> dict[str, float]:
        """What the summary metrics do not hold already: the relative weight distance to the reference."""
        return {"weight_dist_to_retrain": relative_distance(weights, reference, self.num_arrays)}

    def calibrate(self, original: Weights) -> None:
        """Nothing to calibrate: class similarity is a classifier's."""

    def similarity_of(self, weights: Weights) -> np.ndarray:
        raise ConfigError("forgetting.strategies: class similarity needs a classifier; the generative task has none")

    def probe_value(self, metric: str, original: Weights, reference: Weights) -> Callable[[Weights], float]:
        """The normalised forget likelihood r(M): 0 at the reference, 1 at the original; NaN throughout
        when the original's forget log-likelihood is not above the reference's by probe.alpha (relative):
        then nothing was forgotten and a delay would measure noise."""
        at_original, at_reference = self.forget_ll(original), self.forget_ll(reference)
        if not self.separated(at_original, at_reference):
            return lambda w: float("nan")
        return lambda w: (self.forget_ll(w) - at_reference) / (at_original - at_reference)

    def separated(self, at_original: float, at_reference: float) -> bool:
        """Whether the original's forget log-likelihood is above the reference's by more than probe.alpha
        (relative): the probe's r and the separation check share this one rule."""
        return at_original - at_reference > self.cfg.probe.alpha * abs(at_original)

    def check_original(self, original: dict[str, float]) -> None:
        """Refuse an original that learnt nothing: its test log-likelihood must beat the initial model's by 1 nat."""
        initial = self.mean_ll(self.x_test, self.log_z(self.initial_weights()))
        if not original["test_ll"] >= initial + 1.0:
            raise ConfigError(f"train.rounds: the original model's test log-likelihood {original['test_ll']:.2f} is "
                              f"not 1 nat above the initial model's {initial:.2f} (seed {self.cfg.seed}): it never "
                              "learnt the data; train longer (train.rounds, train.lr) before comparing strategies")

    def check_separation(self, metric: str, original: Weights, reference: Weights) -> None:
        """Refuse when the reference's forget log-likelihood is within probe.alpha (relative) of the original's."""
        at_original, at_reference = self.forget_ll(original), self.forget_ll(reference)
        if not self.separated(at_original, at_reference):
            raise ConfigError(f"forgetting.check_separation: the retrained model's forget log-likelihood "
                              f"{at_reference:.2f} is within probe.alpha of the original's {at_original:.2f} nats: "
                              "there is nothing measurable to forget; forget a class or a client whose data the "
                              "others do not explain")

    def write_artifacts(self, models: dict[str, Weights], out: Path) -> None:
        """Every model's generated samples and their auxiliary labels to ``out/samples.npz`` (the report's grid)."""
        arrays = {"forget_classes": np.asarray(self.forget_classes, dtype=np.int64),
                  "num_classes": np.int64(self.data.num_classes)}  # the histogram's bars, empty classes included
        for name, weights in models.items():
            arrays[f"{name}/images"], arrays[f"{name}/labels"] = self.generated(weights)
        atomic_savez(out / "samples.npz", **arrays)
