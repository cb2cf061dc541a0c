"""Influence functions: θ̂ + Δθ, Δθ = (1/n) H⁻¹ b, one shot (docs/methods.md, "Influence functions").

H = (1/n) Σ_i J_iᵀ Λ_i J_i + λ I is the damped Gauss-Newton matrix over every sample the model
was trained on **at the time of the request** (the request's own samples S included: the trained
model minimised the loss over all of them; samples of earlier requests are gone), and
b = Σ_{i∈S} J_iᵀ g_i. Two forms (``form``):

* ``primal`` (federated): one Flower round in which the holders of S (FORGET role, sent
  ``only`` = the request, as PUF's forget updates are) return Σ_{i∈S_k} J_iᵀ g_i
  (``train.lossgrad``); then conjugate gradient on H x = b on the server, each iteration one
  Flower round in which every client with data at the request (the forgotten ones included)
  returns its unnormalised Σ_{i∈D_k} J_iᵀ Λ_i J_i v and n_k (``train.hvp``; the server divides
  the sum by n = Σ_k n_k); Δθ = x / n. Every round goes through ``ctx.next_round``: rounds and
  bytes (the weights and v sent, the weights and the product returned) are counted as every
  method's are. The rounds leave the global weights as they are; the step is applied at the end.
* ``dual``: Δθ from :func:`~fedunlearn.influence.dual_solve` on every client's rows pooled in the
  simulation (no Flower round): an oracle, not a private protocol; the notes say so.

Settings ``[forgetting.influence]``: ``damping`` λ, ``tol`` and ``max_iter`` (CG), ``form``,
``memory_mb`` (the dual's Jacobian blocks), ``recovery`` (false: one shot), ``estimate`` (false:
the comparison scores the dual's predicted output and loss changes against the retrained model,
:func:`retrain_estimate`; a simulation-side oracle, read by :func:`fedunlearn.phases.compare.compare_seed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedunlearn.arrays import Weights
from fedunlearn.clients.influence import HVP, LOSSGRAD, VECTOR
from fedunlearn.config import ExperimentConfig, ForgetRequest
from fedunlearn.data import federated_data, source_dataset
from fedunlearn.data.forget_sets import ForgetSets, forget_indices, kept_indices, requests_json
from fedunlearn.influence import (
    conjugate_gradient,
    dual_solve,
    flat_params,
    linearisation_error,
    loss_change,
    output_change,
    outputs,
    residual_gradient_norm,
)
from fedunlearn.models import build_model
from fedunlearn.settings import require
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies.base import Unlearner, UnlearningContext, UnlearningError
from fedunlearn.strategies.fedavg import FORGET, ClientUpdate, RecordingFedAvg
from fedunlearn.training import set_weights

PRODUCT = "hvp"  # the role of an H_k v task (never recorded in the pseudo-gradient store)
DUAL_KERNEL_LIMIT = 2 * 2**30  # bytes of the nC × nC dual kernel beyond which the dual is refused
ESTIMATE_COLUMNS = ("estimate_rel_error_test", "estimate_rel_error_forget", "estimate_loss_pearson_test",
                    "estimate_loss_pearson_forget", "estimate_linearisation_error", "estimate_residual_gradient")


@dataclass
class InfluenceSettings:
    """``[forgetting.influence]``: λ, CG's tolerance and iteration cap, the form, the dual's memory, recovery."""

    damping: float = 0.01
    tol: float = 1e-6
    max_iter: int = 100
    form: str = "primal"
    memory_mb: float = 256.0
    recovery: bool = False
    estimate: bool = False

    def validate(self) -> None:
        require(math.isfinite(self.damping) and self.damping > 0, "damping",
                f"must be a finite number > 0 (got {self.damping}); it makes H definite, e.g. 0.01")
        require(math.isfinite(self.tol) and 0 < self.tol < 1, "tol",
                f"must be in (0, 1) (got {self.tol}); CG stops at ‖r‖ ≤ tol·‖b‖, e.g. 1e-6")
        require(isinstance(self.max_iter, int) and self.max_iter >= 1, "max_iter",
                f"must be an integer >= 1 (got {self.max_iter}); each CG iteration is one Flower round")
        require(self.form in ("primal", "dual"), "form", f"must be 'primal' or 'dual' (got {self.form!r})")
        require(math.isfinite(self.memory_mb) and self.memory_mb > 0, "memory_mb",
                f"must be > 0 (got {self.memory_mb}); two Jacobian blocks of the dual fit in it")
        require(isinstance(self.estimate, bool), "estimate",
                f"must be true or false (got {self.estimate!r}); true scores the dual's prediction of retrain")


class InfluenceRound(RecordingFedAvg):
    """One round of products at the global weights, which it returns unchanged.

    ``term = "lossgrad"``: the ``targets`` (holders of the request's samples) return
    Σ_{i∈S_k} J_iᵀ g_i on their forget samples. ``term = "hvp"``: every participant returns
    Σ_{i∈D_k} J_iᵀ Λ_i J_i v for the ``vector`` v sent. After the round :attr:`total` holds Σ_k of
    the returned arrays (float64, summed in client order) and :attr:`num_examples` Σ_k n_k.
    """

    def __init__(self, store: PseudoGradientStore | None = None, *, term: str = HVP, vector: Weights | None = None,
                 targets: Sequence[int] = (), request: ForgetRequest | None = None, **kwargs) -> None:
        super().__init__(store, **kwargs)
        if term not in (HVP, LOSSGRAD):
            raise ValueError(f"term must be {HVP!r} or {LOSSGRAD!r} (got {term!r})")
        if (term == HVP) != (vector is not None):
            raise ValueError("an hvp round needs a vector, a lossgrad round none")
        self.behaviour = term
        self.min_train_nodes = 0  # every client asked must answer: the sum needs all of them
        self.term, self.vector, self.targets, self.request = term, vector, sorted(targets), request
        self.total: list[np.ndarray] = []
        self.num_examples = 0

    def tasks(self, server_round: int) -> list[tuple[int, str]]:
        if self.term == LOSSGRAD:
            return [(pid, FORGET) for pid in self.targets]
        clients = self.participants if self.participants is not None else self._clients
        return [(pid, PRODUCT) for pid in clients]

    def task_config(self, partition_id: int, config: ConfigRecord, role: str) -> ConfigRecord:
        config = super().task_config(partition_id, config, role)
        if role == FORGET and self.request is not None:
            config["only"] = requests_json([self.request])
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.vector is not None:
            for m in messages:
                m.content[VECTOR] = ArrayRecord(self.vector)
        return messages

    def collect(self, server_round: int, replies: Iterable[Message]) -> list[ClientUpdate]:
        updates = super().collect(server_round, replies)
        sent = sum(a.nbytes for a in self.vector) * len(self.report.sampled) if self.vector is not None else 0
        returned = sum(a.nbytes for u in updates for a in u.extra.get(self.term, []))
        self.report.bytes_exchanged += sent + returned
        return updates

    def combine(self, server_round: int, global_weights: Weights, updates: list[ClientUpdate]) -> Weights:
        missing = [u.client for u in updates if self.term not in u.extra]
        if missing or not updates:
            raise UnlearningError(f"influence: client(s) {missing} answered the {self.term} round without "
                                  f"'{self.term}' arrays" if missing else f"influence: no {self.term} reply")
        total = [np.zeros(a.shape, dtype=np.float64) for a in updates[0].extra[self.term]]
        for u in updates:  # already in client order
            for t, a in zip(total, u.extra[self.term], strict=True):
                t += a.astype(np.float64)
        self.total, self.num_examples = total, sum(u.num_examples for u in updates)
        return [w.copy() for w in global_weights]


def _flat(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(a, dtype=np.float64)).reshape(-1) for a in arrays])


def _split(flat: torch.Tensor, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    out, start = [], 0
    for a in like:
        out.append(flat[start:start + a.size].reshape(a.shape).numpy().astype(np.float64))
        start += a.size
    return out


def pooled_rows(ctx: UnlearningContext, participants: Sequence[int]):
    """Every participant's rows at the request (earlier requests' samples gone), and which are S."""
    return rows_at_request(ctx.cfg, ctx.request, ctx.earlier, participants)


def rows_at_request(cfg: ExperimentConfig, request: ForgetRequest, earlier: Sequence[ForgetRequest],
                    participants: Sequence[int]):
    """:func:`pooled_rows` without a context: (data, x, y, forget mask) of the participants' rows."""
    data = federated_data(cfg.data, cfg.seed)
    xs, ys, forget = [], [], []
    for pid in participants:
        c = data.clients[pid]
        kept = kept_indices(c.y_train, c.poisoned, pid, cfg.seed, list(earlier), ())
        gone = forget_indices(request, pid, c.y_train, c.poisoned, cfg.seed)
        xs.append(c.x_train[kept])
        ys.append(c.y_train[kept])
        forget.append(np.isin(kept, gone))
    return data, np.concatenate(xs), np.concatenate(ys), np.concatenate(forget)


def _check_kernel(n: int, num_classes: int) -> None:
    kernel = (n * num_classes) ** 2 * 8
    if kernel > DUAL_KERNEL_LIMIT:
        raise UnlearningError(f"influence: the dual kernel of {n} samples x {num_classes} classes "
                              f"takes {kernel / 2**30:.1f} GiB (limit {DUAL_KERNEL_LIMIT / 2**30:g}); "
                              "use form = \"primal\" (and estimate = false)")


# ----------------------------------------------------------------------------- the estimate of retrain


def relative_error(predicted: torch.Tensor, real: torch.Tensor) -> float:
    """‖predicted − real‖ / ‖real‖ (Frobenius); NaN when ``real`` is 0 or empty."""
    den = float(real.norm()) if real.numel() else 0.0
    return float((predicted - real).norm()) / den if den > 0 else float("nan")


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally long vectors; NaN with fewer than two entries or no spread."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def score_estimate(predicted_f: torch.Tensor, real_f: torch.Tensor, predicted_loss: torch.Tensor,
                   real_loss: torch.Tensor) -> dict[str, float]:
    """``rel_error`` of the output changes (n × C) and ``loss_pearson`` of the loss changes (n) on one set."""
    return {"rel_error": relative_error(predicted_f, real_f), "loss_pearson": pearson(predicted_loss, real_loss)}


def estimate_settings(specs: Sequence) -> InfluenceSettings | None:
    """The settings of the first listed ``influence`` strategy with ``estimate = true``, if any."""
    for spec in specs:
        if isinstance(spec.settings[0], InfluenceSettings) and spec.settings[0].estimate:
            return spec.settings[0]
    return None


def estimate_applies(cfg: ExperimentConfig) -> bool:
    """Whether the estimate can be scored: exactly one forget request, at the last training round."""
    requests = cfg.forget_requests()
    return len(requests) == 1 and requests[0].round == cfg.train.rounds


def retrain_estimate(cfg: ExperimentConfig, settings: InfluenceSettings, original: Weights, retrained: Weights,
                     sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Predict retrain from θ̂ by the dual and score the prediction against the real retrained model.

    The dual (:func:`~fedunlearn.influence.dual_solve`, ``settings``' λ and memory bound) runs on
    every client's rows at the one request (its S included; :func:`rows_at_request`), a
    simulation-side oracle. On each set of ``sets`` (``"test"``, ``"forget"``: (x, y)) the predicted
    output changes Δf = K(x, X) α and loss changes gᵀΔf are compared with the real ones,
    f(θ_retrain) − f(θ̂) and ℓ(θ_retrain) − ℓ(θ̂): ``estimate_rel_error_<set>`` and
    ``estimate_loss_pearson_<set>``. Also ``estimate_linearisation_error`` (over the sets' rows
    together) and ``estimate_residual_gradient`` ‖∇L(θ̂)‖ over the pooled rows. Only the network's
    arrays are read (never an output filter's).
    """
    request = cfg.forget_requests()[0]
    data = federated_data(cfg.data, cfg.seed)
    removed = ForgetSets.of(data, [request], cfg.seed)
    participants = sorted(set(removed.holders[0]) | set(removed.remaining_clients(data)))
    data, x, y, forget = rows_at_request(cfg, request, [], participants)
    _check_kernel(len(x), data.num_classes)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    n_arrays = len(list(model.parameters()))
    set_weights(model, list(retrained[:n_arrays]))
    theta_r = flat_params(model)
    set_weights(model, list(original[:n_arrays]))
    theta = flat_params(model)
    memory = int(settings.memory_mb * 2**20)
    res = dual_solve(model, theta, x, y, forget, settings.damping, memory_bytes=memory)
    out: dict[str, float] = {}
    for name, (xs, ys) in sets.items():
        if len(ys) == 0:
            out.update({f"estimate_rel_error_{name}": float("nan"), f"estimate_loss_pearson_{name}": float("nan")})
            continue
        logits = outputs(model, theta, xs)
        real_f = outputs(model, theta_r, xs) - logits
        pred_f = output_change(model, theta, xs, x, res.alpha, memory_bytes=memory)
        yt = torch.as_tensor(ys, dtype=torch.long)
        loss = torch.nn.functional.cross_entropy
        real_loss = loss(logits + real_f, yt, reduction="none") - loss(logits, yt, reduction="none")
        scores = score_estimate(pred_f, real_f, loss_change(logits, yt, pred_f), real_loss)
        out.update({f"estimate_{k}_{name}": v for k, v in scores.items()})
    x_eval = np.concatenate([xs for xs, ys in sets.values() if len(ys)])
    out["estimate_linearisation_error"] = linearisation_error(model, theta, x_eval, res.delta)
    out["estimate_residual_gradient"] = residual_gradient_norm(model, theta, x, y)
    return out


class Influence(Unlearner):
    """θ̂ + Δθ by influence functions, primal (federated CG) or dual (simulation-side oracle).

    After :meth:`unlearn`, :attr:`delta` holds Δθ (flat, float64) and :attr:`result` the CG result
    (primal) or the dual's (α, Δθ, block size).
    """

    needs_classifier = True  # the Gauss-Newton Hessian of the cross-entropy loss

    Settings = InfluenceSettings
    recovers = False
    step_settings = ("damping",)

    def __init__(self, settings: InfluenceSettings | None = None) -> None:
        super().__init__(settings if settings is not None else InfluenceSettings())
        self.recovers = bool(self.settings.recovery)
        self.delta: torch.Tensor | None = None
        self.result = None

    def refuses(self, cfg: ExperimentConfig) -> str:
        data = source_dataset(cfg.data, cfg.seed)
        buffers = [name for name, _ in build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
                   .named_buffers()]
        if buffers:  # functional_call replaces parameters only: a buffer's state would be left out of H
            return (f"needs a model without buffers, and model.name = {cfg.model.name!r} has "
                    f"{', '.join(buffers[:3])}{' ...' if len(buffers) > 3 else ''} (e.g. BatchNorm statistics; "
                    "use GroupNorm or LayerNorm)")
        return super().refuses(cfg)

    def unlearn(self, ctx: UnlearningContext) -> Weights:
        if ctx.request is None:
            raise UnlearningError("influence: serves a forget request; there is none")
        network = list(ctx.weights[:len(ctx.init_weights)])  # not a server-side output filter's matrix
        participants = sorted(set(ctx.remaining) | set(ctx.forgotten))
        delta = self._dual(ctx, network, participants) if self.settings.form == "dual" else \
            self._primal(ctx, network, participants)
        self.delta = delta
        step = _split(delta, network)
        new = [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(network, step, strict=True)]
        return new + list(ctx.weights[len(network):])

    def _round(self, ctx: UnlearningContext, participants: Sequence[int], **kwargs) -> InfluenceRound:
        strategy = InfluenceRound.from_config(ctx.cfg, ctx.store, ctx.node_of, participants, ctx.earlier,
                                              request=ctx.request, **kwargs)
        ctx.next_round(strategy, ctx.weights, "unlearn")
        return strategy

    def _primal(self, ctx: UnlearningContext, network: Weights, participants: list[int]) -> torch.Tensor:
        f = self.settings
        b = _flat(self._round(ctx, participants, term=LOSSGRAD, targets=ctx.forgotten).total)
        sizes: set[int] = set()

        def hvp(v: torch.Tensor) -> torch.Tensor:
            r = self._round(ctx, participants, term=HVP, vector=_split(v, network))
            sizes.add(r.num_examples)
            return _flat(r.total) / r.num_examples

        res = conjugate_gradient(hvp, b, f.damping, f.tol, f.max_iter)  # H x = b; Δθ = x / n
        if len(sizes) > 1:
            raise UnlearningError(f"influence: the clients reported different sample counts across rounds {sizes}")
        n = sizes.pop() if sizes else 1  # no round: b = 0, Δθ = 0
        self.result = res
        delta = res.solution / n
        rel = res.residuals[-1] / res.residuals[0] if res.residuals[0] > 0 else 0.0
        ctx.notes["influence"] = (f"primal: {res.iterations} CG iterations ({res.iterations} hvp rounds over "
                                  f"{len(participants)} clients, n {n}, + 1 lossgrad round over {len(ctx.forgotten)} "
                                  f"holders), relative residual {rel:.2e}, "
                                  f"{'converged' if res.converged else 'not converged'} (tol {f.tol:g}), "
                                  f"|Δθ| {float(delta.norm()):.4g}, λ {f.damping:g}")
        return delta

    def _dual(self, ctx: UnlearningContext, network: Weights, participants: list[int]) -> torch.Tensor:
        f = self.settings
        data, x, y, forget = pooled_rows(ctx, participants)
        _check_kernel(len(x), data.num_classes)
        model = build_model(ctx.cfg.model, data.input_shape, data.num_classes, ctx.cfg.seed)
        set_weights(model, network)
        res = dual_solve(model, flat_params(model), x, y, forget, f.damping,
                         memory_bytes=int(f.memory_mb * 2**20))
        self.result = res
        ctx.notes["influence"] = (f"dual: needed every client's Jacobians (a simulation-side oracle, not a private "
                                  f"protocol); n {len(x)}, |S| {int(forget.sum())}, blocks of {res.block_size} "
                                  f"samples, |Δθ| {float(res.delta.norm()):.4g}, λ {f.damping:g}")
        return res.delta
