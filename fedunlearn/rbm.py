"""Bernoulli restricted Boltzmann machine: the model of the generative task (docs/methods.md,
"Generative task").

Visible units v ∈ {0,1}^D and hidden units h ∈ {0,1}^H have the energy

    E(v, h) = −aᵀv − bᵀh − vᵀWh,

so summing out h gives the free energy

    F(v) = −aᵀv − Σ_j softplus(b_j + (vᵀW)_j),    p(v) = exp(−F(v)) / Z.

Training minimises the contrastive-divergence surrogate mean F(v_data) − mean F(v_model) by SGD,
with v_model from k Gibbs steps (CD-k) or from persistent chains (PCD), detached so only the
free energies carry gradient. The log-likelihood needs log Z: exact by enumerating the 2^H hidden
states when H ≤ 20, else by annealed importance sampling (Salakhutdinov & Murray 2008). Every
computation of log Z or of a log-likelihood runs in float64 whatever the parameters' dtype,
because log Z is a sum of up to 2^20 terms and a log-likelihood a difference of large numbers.

Sampling takes an explicit :class:`torch.Generator` (``None`` draws from the global RNG), so a
client's run is reproducible whichever worker executes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as nnf

from fedunlearn.settings import require

__all__ = [
    "MAX_EXACT_HIDDEN",
    "RBM",
    "ContrastiveDivergence",
    "RBMSettings",
    "ais_schedule",
    "base_rate_visible_bias",
    "cd_loss",
    "log_likelihood",
    "log_partition_ais",
    "log_partition_exact",
    "rbm",
    "sample",
]

MAX_EXACT_HIDDEN = 20
"""The most hidden units :func:`log_partition_exact` enumerates (2^20 ≈ 10^6 hidden states)."""


def _bernoulli(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Binary draws with success probabilities ``probs``, from ``generator``.

    A generator draws only on its own device; when it differs from the tensor's (a CPU generator,
    a model on CUDA) the uniforms are drawn there and moved, so the draws depend on the seed only.
    """
    if generator is None or generator.device == probs.device:
        return torch.bernoulli(probs, generator=generator)
    uniform = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=generator.device)
    return (uniform.to(probs.device) < probs).to(probs.dtype)


def _flat(x: torch.Tensor, width: int, like: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` of shape (N, ...) as (N, width) with ``like``'s dtype and device."""
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if flat.shape[1] != width:
        raise ValueError(f"{what}: expected {width} units per sample, got shape {tuple(x.shape)}")
    return flat.to(like)


def _free_energy(v: torch.Tensor, weight: torch.Tensor, visible_bias: torch.Tensor,
                 hidden_bias: torch.Tensor) -> torch.Tensor:
    """F(v) = −aᵀv − Σ_j softplus(b_j + (vᵀW)_j) for a batch v of shape (N, D)."""
    return -(v @ visible_bias) - nnf.softplus(v @ weight + hidden_bias).sum(dim=1)


class RBM(nn.Module):
    """A Bernoulli RBM with D visible and H hidden units (docs/methods.md, "Generative task").

    Parameters are registered in the order ``W`` (D × H), ``a`` (D, visible bias), ``b``
    (H, hidden bias): weights travel between server and clients as lists in state-dict order.
    There are no buffers. Every method flattens its input of shape (N, ...) to (N, D) (or (N, H)
    for hidden states) and casts it to the parameters' dtype and device.

    Parameters
    ----------
    visible : int
        D, the number of visible units.
    hidden : int
        H, the number of hidden units.
    init_std : float
        Standard deviation of the Gaussian initial weights, drawn from the global torch RNG;
        biases start at 0.
    """

    def __init__(self, visible: int, hidden: int, init_std: float = 0.01) -> None:
        super().__init__()
        if visible < 1 or hidden < 0:
            raise ValueError(f"RBM needs visible >= 1 and hidden >= 0 (got {visible}, {hidden})")
        self.W = nn.Parameter(torch.randn(visible, hidden) * init_std)
        self.a = nn.Parameter(torch.zeros(visible))
        self.b = nn.Parameter(torch.zeros(hidden))

    @property
    def visible(self) -> int:
        """D, the number of visible units."""
        return self.W.shape[0]

    @property
    def hidden(self) -> int:
        """H, the number of hidden units."""
        return self.W.shape[1]

    def _visible_batch(self, v: torch.Tensor) -> torch.Tensor:
        return _flat(v, self.visible, self.W, "visible states")

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = −aᵀv − Σ_j softplus(b_j + (vᵀW)_j), shape (N,); differentiable in W, a, b."""
        return _free_energy(self._visible_batch(v), self.W, self.a, self.b)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """The free energy F(v), shape (N,): cheap, and lower for likelier inputs."""
        return self.free_energy(v)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        """p(h_j = 1 | v) = sigmoid(b_j + (vᵀW)_j), shape (N, H)."""
        return torch.sigmoid(self._visible_batch(v) @ self.W + self.b)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        """p(v_i = 1 | h) = sigmoid(a_i + (Wh)_i), shape (N, D)."""
        return torch.sigmoid(_flat(h, self.hidden, self.W, "hidden states") @ self.W.T + self.a)

    def sample_hidden(self, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Binary h ~ p(h | v), shape (N, H), drawn from ``generator`` (``None``: global RNG)."""
        return _bernoulli(self.hidden_probs(v), generator)

    def sample_visible(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Binary v ~ p(v | h), shape (N, D), drawn from ``generator`` (``None``: global RNG)."""
        return _bernoulli(self.visible_probs(h), generator)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """Run k steps of block Gibbs sampling v → h → v from ``v``; return the binary v_k.

        Parameters
        ----------
        v : torch.Tensor
            Start states, shape (N, ...) with D units per sample.
        k : int
            Number of steps, ``k >= 0``; ``k = 0`` returns ``v`` flattened (a copy).
        generator : torch.Generator or None
            Source of the draws; ``None`` draws from the global RNG.

        Returns
        -------
        torch.Tensor
            Shape (N, D), entries in {0, 1}, without gradient.
        """
        if k < 0:
            raise ValueError(f"gibbs: k must be >= 0 (got {k})")
        state = self._visible_batch(v).clone()
        for _ in range(k):
            state = self.sample_visible(self.sample_hidden(state, generator), generator)
        return state


@dataclass
class RBMSettings:
    """``[model.rbm]``: the number of hidden units and the spread of the initial weights."""

    hidden: int = 16
    init_std: float = 0.01

    def validate(self) -> None:
        require(self.hidden >= 1, "hidden", f"must be >= 1 (got {self.hidden})")
        # Zero weights make every hidden unit receive the same update forever (a symmetric start).
        require(math.isfinite(self.init_std) and self.init_std > 0, "init_std",
                f"must be a positive number such as 0.01 (got {self.init_std})")


def rbm(input_shape: tuple[int, ...], num_classes: int, settings: RBMSettings) -> RBM:
    """Model-registry builder: an :class:`RBM` with one visible unit per input feature.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one sample; D is its product (an 8×8 digit gives D = 64).
    num_classes : int
        Ignored: the RBM models the inputs, not the labels.
    settings : RBMSettings
        ``hidden`` is H; W ~ N(0, init_std²) from the global torch RNG (the registry seeds it).
    """
    del num_classes
    return RBM(math.prod(input_shape), settings.hidden, init_std=settings.init_std)


def cd_loss(model: RBM, v: torch.Tensor, k: int, generator: torch.Generator | None,
            chains: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CD-k (or PCD-k) surrogate mean F(v) − mean F(v_model), and v_model.

    Its gradient is the usual contrastive-divergence estimate of the negative log-likelihood's:
    ∂/∂W = −(mean v p(h|v)ᵀ − mean v_model p(h|v_model)ᵀ), and likewise for a and b.

    Parameters
    ----------
    model : RBM
    v : torch.Tensor
        A data batch, shape (N, ...).
    k : int
        Gibbs steps, ``k >= 1``.
    generator : torch.Generator or None
        Source of the Gibbs draws.
    chains : torch.Tensor, optional
        Persistent chain states (PCD): the k steps start from them instead of from ``v``. Their
        number need not match N.

    Returns
    -------
    loss : torch.Tensor
        Scalar surrogate, to be minimised.
    v_model : torch.Tensor
        The detached negative samples, shape (M, D); pass them back as ``chains`` to persist.
    """
    if k < 1:
        raise ValueError(f"cd_loss: k must be >= 1 (got {k})")
    v_model = model.gibbs(v if chains is None else chains, k, generator).detach()
    return model.free_energy(v).mean() - model.free_energy(v_model).mean(), v_model


class ContrastiveDivergence:
    """A per-batch CD-k objective that can keep persistent chains (PCD) across calls.

    Parameters
    ----------
    k : int
        Gibbs steps per call, ``k >= 1``.
    persistent : bool
        If true, the negative samples of each call start the next call's chains. The chains
        start from the first batch; when a batch has a different size, the chains are trimmed to
        a random subset or padded with random copies of themselves, drawn from the generator.
    """

    def __init__(self, k: int = 1, persistent: bool = False) -> None:
        if k < 1:
            raise ValueError(f"ContrastiveDivergence: k must be >= 1 (got {k})")
        self.k = k
        self.persistent = persistent
        self.chains: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the persistent chains: the next call starts them from its batch."""
        self.chains = None

    def _resized_chains(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        chains = self.chains
        assert chains is not None
        m = chains.shape[0]
        if n == m:
            return chains
        device = generator.device if generator is not None else chains.device
        if n < m:
            keep = torch.randperm(m, generator=generator, device=device)[:n]
        else:
            extra = torch.randint(m, (n - m,), generator=generator, device=device)
            keep = torch.cat([torch.arange(m, device=device), extra])
        return chains[keep.to(chains.device)]

    def __call__(self, model: RBM, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The surrogate loss for batch ``v`` (see :func:`cd_loss`); updates the chains if persistent."""
        if not self.persistent:
            return cd_loss(model, v, self.k, generator)[0]
        if self.chains is None or self.chains.shape[1] != model.visible:
            self.chains = _flat(v, model.visible, model.W, "visible states").detach().clone()
        chains = self._resized_chains(v.shape[0], generator).to(model.W)
        loss, self.chains = cd_loss(model, v, self.k, generator, chains=chains)
        return loss


def _hidden_states(start: int, stop: int, hidden: int, device: torch.device) -> torch.Tensor:
    """Hidden states number ``start`` … ``stop − 1`` in binary (bit j is unit j), float64."""
    codes = torch.arange(start, stop, device=device)
    bits = torch.arange(hidden, device=device)
    return ((codes[:, None] >> bits) & 1).to(torch.float64)


def _double_params(model: RBM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return model.W.detach().double(), model.a.detach().double(), model.b.detach().double()


@torch.no_grad()
def log_partition_exact(model: RBM, block: int = 4096) -> float:
    """log Z by enumerating the 2^H hidden states, in float64.

    log Z = logsumexp_h [bᵀh + Σ_i softplus(a_i + (Wh)_i)]; the states are taken ``block`` at a
    time so memory stays about ``block × D`` numbers whatever H.

    Raises
    ------
    ValueError
        If H > 20 (the enumeration would be too slow): use :func:`log_partition_ais`.
    """
    if model.hidden > MAX_EXACT_HIDDEN:
        raise ValueError(
            f"log_partition_exact: hidden = {model.hidden} needs 2^{model.hidden} hidden states; "
            f"exact log Z is limited to hidden <= {MAX_EXACT_HIDDEN}: set hidden <= "
            f"{MAX_EXACT_HIDDEN} or estimate it with log_partition_ais")
    if block < 1:
        raise ValueError(f"log_partition_exact: block must be >= 1 (got {block})")
    weight, visible_bias, hidden_bias = _double_params(model)
    total = 1 << model.hidden
    block_sums = []
    for start in range(0, total, block):
        h = _hidden_states(start, min(start + block, total), model.hidden, weight.device)
        log_terms = h @ hidden_bias + nnf.softplus(h @ weight.T + visible_bias).sum(dim=1)
        block_sums.append(torch.logsumexp(log_terms, dim=0))
    return float(torch.logsumexp(torch.stack(block_sums), dim=0))


def ais_schedule(steps: int) -> torch.Tensor:
    """Inverse temperatures 0 = β_0 < … < β_steps = 1, float64, shape (steps + 1,).

    Piecewise linear in Salakhutdinov & Murray's (2008) proportions (500 steps over [0, 0.5],
    4000 over [0.5, 0.9], 10000 over [0.9, 1]) scaled to ``steps`` in all, ``steps >= 3``: most
    steps go where the distributions change fastest, near the target.
    """
    if steps < 3:
        raise ValueError(f"ais_schedule: steps must be >= 3 (got {steps})")
    first = max(1, round(steps * 500 / 14500))
    second = max(1, round(steps * 4000 / 14500))
    third = steps - first - second
    pieces = [torch.linspace(0.0, 0.5, first + 1, dtype=torch.float64)[:-1],
              torch.linspace(0.5, 0.9, second + 1, dtype=torch.float64)[:-1],
              torch.linspace(0.9, 1.0, third + 1, dtype=torch.float64)]
    return torch.cat(pieces)


def base_rate_visible_bias(v: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Visible biases logit(mean v) of the base-rate model, for :func:`log_partition_ais`.

    The base model then matches the data's marginals, which starts AIS closer to a trained RBM
    than a uniform base does. Means are clipped to [eps, 1 − eps] so constant pixels stay finite.
    """
    flat = v.reshape(v.shape[0], math.prod(v.shape[1:])).double()
    return torch.logit(flat.mean(dim=0).clamp(eps, 1 - eps))


@torch.no_grad()
def log_partition_ais(model: RBM, *, runs: int = 100, steps: int = 1000,
                      generator: torch.Generator | None,
                      base_visible_bias: torch.Tensor | None = None) -> float:
    """log Z by annealed importance sampling (Salakhutdinov & Murray 2008), in float64.

    The base model is the RBM with visible biases a_0, W = 0 and b = 0: its visible units are
    independent Bernoulli(sigmoid(a_0i)), sampled exactly, and log Z_0 = Σ_i softplus(a_0i) +
    H log 2 (each hidden unit is free, a factor 2). The intermediate
    distributions p_β(v) ∝ exp(−F_β(v)) with

        F_β(v) = −((1 − β) a_0 + β a)ᵀv − Σ_j softplus(β (b_j + (vᵀW)_j))

    move from the base (β = 0) to the model (β = 1) along :func:`ais_schedule`; each is left
    invariant by one Gibbs step of the RBM with visible biases (1 − β) a_0 + β a, weights βW and
    hidden biases βb. The estimate is log Z_0 + log mean_runs exp(log w).

    Parameters
    ----------
    model : RBM
    runs : int
        M, the number of independent annealing runs (importance weights).
    steps : int
        Transitions from base to model. With the default, on RBMs with D = 64 and H ≤ 20
        trained on binarised digits, the estimate was within 0.07 nats of the exact log Z with
        the base-rate base and within 0.25 nats with the uniform one, in about 0.5 s on one CPU
        thread.
    generator : torch.Generator or None
        Source of every draw.
    base_visible_bias : torch.Tensor, optional
        a_0, shape (D,), e.g. :func:`base_rate_visible_bias` of the training data; zeros (a
        uniform base) if omitted.

    Returns
    -------
    float
        The estimate of log Z. It is unbiased for Z, so in log space it tends to fall slightly
        below log Z; more steps and runs shrink the gap.
    """
    if runs < 1:
        raise ValueError(f"log_partition_ais: runs must be >= 1 (got {runs})")
    weight, visible_bias, hidden_bias = _double_params(model)
    if base_visible_bias is None:
        base_bias = torch.zeros_like(visible_bias)
    else:
        base_bias = base_visible_bias.detach().to(visible_bias).reshape(-1)
        if base_bias.shape != visible_bias.shape:
            raise ValueError(f"log_partition_ais: base_visible_bias needs shape ({model.visible},), "
                             f"got {tuple(base_visible_bias.shape)}")
    betas = ais_schedule(steps).tolist()
    log_z0 = float(nnf.softplus(base_bias).sum()) + model.hidden * math.log(2.0)

    v = _bernoulli(torch.sigmoid(base_bias).expand(runs, -1).contiguous(), generator)
    log_weights = torch.zeros(runs, dtype=torch.float64, device=weight.device)
    bias_gap = visible_bias - base_bias
    for previous, beta in zip(betas[:-1], betas[1:], strict=True):
        # log w += F_{β_prev}(v) − F_β(v); both share the hidden pre-activations.
        pre = v @ weight + hidden_bias
        log_weights += (beta - previous) * (v @ bias_gap)
        log_weights += (nnf.softplus(beta * pre) - nnf.softplus(previous * pre)).sum(dim=1)
        if beta < 1.0:  # the last distribution needs no transition
            h = _bernoulli(torch.sigmoid(beta * pre), generator)
            v = _bernoulli(torch.sigmoid(base_bias + beta * (bias_gap + h @ weight.T)), generator)
    log_mean_weight = torch.logsumexp(log_weights, dim=0) - math.log(runs)
    return log_z0 + float(log_mean_weight)


@torch.no_grad()
def log_likelihood(model: RBM, v: torch.Tensor, log_z: float) -> torch.Tensor:
    """Per-sample log p(v) = −F(v) − log Z, float64, shape (N,).

    ``log_z`` comes from :func:`log_partition_exact` or :func:`log_partition_ais`.
    """
    weight, visible_bias, hidden_bias = _double_params(model)
    flat = _flat(v, model.visible, weight, "visible states")
    return -_free_energy(flat, weight, visible_bias, hidden_bias) - log_z


@torch.no_grad()
def sample(model: RBM, n: int, burn_in: int, generator: torch.Generator | None,
           init: torch.Tensor | None = None) -> torch.Tensor:
    """Draw n visible samples by Gibbs sampling.

    Parameters
    ----------
    model : RBM
    n : int
        Number of chains (and samples).
    burn_in : int
        Gibbs steps v → h → v run before returning, ``>= 0``.
    generator : torch.Generator or None
        Source of every draw.
    init : torch.Tensor, optional
        Start states, shape (n, ...); uniform random binary states if omitted.

    Returns
    -------
    torch.Tensor
        Shape (n, D), binary: the last step's Bernoulli draw from p(v | h), not the probabilities
        p(v | h) themselves (call ``model.visible_probs`` for those).
    """
    if init is None:
        half = torch.full((n, model.visible), 0.5, dtype=model.W.dtype, device=model.W.device)
        init = _bernoulli(half, generator)
    elif init.shape[0] != n:
        raise ValueError(f"sample: init has {init.shape[0]} states but n = {n}")
    return model.gibbs(init, burn_in, generator)
