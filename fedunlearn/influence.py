"""Influence functions: the removal estimate θ̂_{−S} ≈ θ̂ + Δθ in primal and dual form.

The definitions are docs/methods.md, "Influence functions". For a trained model θ̂ (p parameters,
flattened in ``named_parameters`` order), outputs f(x; θ) ∈ R^C, softmax cross-entropy ℓ, n
training samples and a forget set S:

* J(x) = ∂f/∂θ (C × p); per sample g_i = ∂ℓ/∂f = p_i − e_{y_i}, Λ_i = ∂²ℓ/∂f² = diag(p_i) − p_i p_iᵀ;
* H = (1/n) Σ_i J_iᵀ Λ_i J_i + λ I (damped Gauss-Newton), b = Σ_{i∈S} J_iᵀ g_i, Δθ = (1/n) H⁻¹ b;
* primal: conjugate gradient on H Δθ = b/n with Hessian-vector products (a jvp, then a vjp; no
  p × p matrix). :func:`ggn_hvp` is the "H_k v on my data" a client computes and
  :func:`conjugate_gradient` the server-side loop that takes any hvp callable;
  :func:`weighted_hvp` sums clients' products with weights n_k/n (the federated form);
* dual (kernel): α solves (nλ I + Λ𝐊) α = v, 𝐊 = 𝐉𝐉ᵀ (nC × nC) built in blocks of samples,
  Δθ = 𝐉ᵀ α by one vjp per block, Δf(x) = K(x, X) α.

Every function works on any ``torch.nn.Module`` without buffers (the model registry's; the strategy
refuses one with buffers) through ``torch.func.functional_call``: the module is never modified, its
parameters are replaced by the flat vector given (float64 by default: the linear algebra is done in
double precision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

Hvp = Callable[[torch.Tensor], torch.Tensor]

_DOUBLE_BYTES = 8


# ----------------------------------------------------------------------------- flat parameters


def flat_params(model: nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The model's parameters as one detached vector (``named_parameters`` order), in ``dtype``."""
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in model.parameters()])


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat vector into the model's named parameter shapes (views of ``flat``)."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[start:start + p.numel()].view(p.shape)
        start += p.numel()
    if start != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the model has {start} parameters")
    return out


def outputs(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """f(x; θ) with θ = ``params`` (flat): logits of shape (len(x), C), in the dtype of ``params``."""
    return functional_call(model, unflatten(model, params), (_as(x, params),))


def _as(x: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(x).to(dtype=like.dtype, device=like.device)


def _labels(y: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(y).to(dtype=torch.long, device=like.device)


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- loss derivatives


def loss_grad_outputs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """g = ∂ℓ/∂f = softmax(f) − one_hot(y) per row (softmax cross-entropy)."""
    g = torch.softmax(logits, dim=-1)
    return g - nn.functional.one_hot(y, logits.shape[-1]).to(g.dtype)


def apply_output_hessian(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Λ_i u_i = p_i ⊙ u_i − p_i (p_iᵀ u_i) per sample i; ``u`` is (n, C) or (n, C, k)."""
    if u.dim() == probs.dim():
        return probs * u - probs * (probs * u).sum(-1, keepdim=True)
    q = probs.unsqueeze(-1)
    return q * u - q * (q * u).sum(-2, keepdim=True)


# ----------------------------------------------------------------------------- primal


def ggn_hvp(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
            batch_size: int = 256) -> Hvp:
    """v ↦ (1/n) Σ_i J_iᵀ Λ_i J_i v on the n rows of ``x`` (undamped Gauss-Newton product).

    Per batch one jvp gives J v and the logits, Λ is applied per sample, and one vjp gives
    Jᵀ(ΛJv); memory is that of a forward and backward pass of ``batch_size`` samples, never p × p.
    This is the client-side "H_k v on my data"; :func:`weighted_hvp` combines clients.

    Parameters
    ----------
    model
        Any module without buffers; only its structure is used.
    params
        θ̂ as a flat vector (:func:`flat_params`); its dtype and device are the computation's.
    x
        The n samples (a client's own rows in the federated form).
    batch_size
        Samples per jvp/vjp pass.

    Returns
    -------
    Callable
        v (p,) ↦ (1/n) Σ_i J_iᵀ Λ_i J_i v (p,), λ not included.
    """
    xt = _as(x, params)
    n = len(xt)
    if n == 0:
        raise ValueError("ggn_hvp needs at least one sample")
    blocks = _blocks(n, batch_size)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        v = v.to(params)
        total = torch.zeros_like(params)
        for sl in blocks:
            xb = xt[sl]

            def f(theta: torch.Tensor, xb: torch.Tensor = xb) -> torch.Tensor:
                return outputs(model, theta, xb)

            logits, jv = jvp(f, (params,), (v,))
            _, pullback = vjp(f, params)
            total += pullback(apply_output_hessian(torch.softmax(logits, -1), jv))[0]
        return total / n

    return hvp


def weighted_hvp(hvps: Sequence[Hvp], weights: Sequence[float]) -> Hvp:
    """v ↦ Σ_k w_k hvp_k(v): the federated product Σ_k (n_k/n) H_k v from clients' own products."""
    if len(hvps) != len(weights) or not hvps:
        raise ValueError(f"{len(hvps)} hvps and {len(weights)} weights: need as many, at least one")

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return sum(w * h(v) for h, w in zip(hvps, weights, strict=True))

    return hvp


def forget_gradient(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                    y: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """b = Σ_{i∈S} J_iᵀ g_i over the rows given (the forget set): the gradient of Σ_i ℓ_i."""
    xt, yt = _as(x, params), _labels(y, params)
    b = torch.zeros_like(params)
    for sl in _blocks(len(xt), batch_size):
        def f(theta: torch.Tensor, xb: torch.Tensor = xt[sl]) -> torch.Tensor:
            return outputs(model, theta, xb)

        logits, pullback = vjp(f, params)
        b += pullback(loss_grad_outputs(logits, yt[sl]))[0]
    return b


@dataclass
class CGResult:
    """A conjugate-gradient solve: the solution, iterations taken, ‖r_k‖ per iteration (r_0 first)."""

    solution: torch.Tensor
    iterations: int
    residuals: list[float] = field(default_factory=list)
    converged: bool = False


def conjugate_gradient(hvp: Hvp, rhs: torch.Tensor, damping: float = 0.0, tol: float = 1e-10,
                       max_iter: int = 1000) -> CGResult:
    """Solve (A + damping·I) x = rhs by conjugate gradient, A given only as ``hvp`` (v ↦ A v).

    A must be symmetric positive semi-definite (the Gauss-Newton matrix is) and damping > 0 makes
    the system definite. Starts from x = 0 and stops when ‖r‖ ≤ tol·‖rhs‖ or after ``max_iter``
    iterations. In the federated form ``hvp`` is :func:`weighted_hvp` of the clients' products:
    each iteration is one round of "H_k v" requests.

    Parameters
    ----------
    hvp
        v ↦ A v, A symmetric positive semi-definite.
    rhs
        The right-hand side (b/n for the removal estimate).
    damping
        λ, added as λ v to every product.
    tol
        Relative residual ‖r‖/‖rhs‖ at which to stop.
    max_iter
        Iteration cap; :attr:`CGResult.converged` says whether ``tol`` was reached.

    Returns
    -------
    CGResult
        The solution, iterations taken and ‖r_k‖ for k = 0..iterations.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    d = r.clone()
    rr = float(r @ r)
    target = tol * float(rhs.norm())
    residuals = [rr ** 0.5]
    if residuals[0] <= target:
        return CGResult(x, 0, residuals, True)
    for k in range(1, max_iter + 1):
        ad = hvp(d) + damping * d
        step = rr / float(d @ ad)
        x = x + step * d
        r = r - step * ad
        rr_new = float(r @ r)
        residuals.append(rr_new ** 0.5)
        if residuals[-1] <= target:
            return CGResult(x, k, residuals, True)
        d = r + (rr_new / rr) * d
        rr = rr_new
    return CGResult(x, max_iter, residuals, False)


def primal_delta(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                 y: torch.Tensor | np.ndarray, forget: np.ndarray | Sequence[int], damping: float,
                 *, batch_size: int = 256, tol: float = 1e-10, max_iter: int = 1000) -> CGResult:
    """Δθ = (1/n) H⁻¹ b by CG, H from all n rows of (x, y), b from the rows ``forget`` (centralized)."""
    idx = _indices(forget, len(x))
    b = forget_gradient(model, params, _as(x, params)[idx], _labels(y, params)[idx], batch_size)
    return conjugate_gradient(ggn_hvp(model, params, x, batch_size), b / len(x), damping, tol, max_iter)


def _indices(forget: np.ndarray | Sequence[int], n: int) -> torch.Tensor:
    """Row indices of the forget set, from indices or a boolean mask of length n."""
    idx = np.asarray(forget)
    if idx.dtype == bool:
        if len(idx) != n:
            raise ValueError(f"forget mask has {len(idx)} entries for {n} samples")
        idx = np.flatnonzero(idx)
    return torch.as_tensor(idx, dtype=torch.long)


# ----------------------------------------------------------------------------- dual (kernel)


def jacobian(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The stacked Jacobian of the rows of ``x``: shape (len(x)·C, p), row i·C + c = ∂f_c(x_i)/∂θ.

    Per-sample Jacobians, ``vmap(jacrev(f_single))`` over the rows: memory grows with the result,
    B·C·p, not with B² as ``jacrev`` over the whole block's outputs does (each of its B·C
    pullbacks carries the batch).
    """
    xt = _as(x, params)

    def single(theta: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return outputs(model, theta, xi.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(single), in_dims=(None, 0))(params, xt)  # (B, C, p)
    return jac.reshape(-1, params.numel())


def block_size_for(memory_bytes: int, num_params: int, num_classes: int) -> int:
    """Samples per block so that two Jacobian blocks (2·B·C·p doubles) fit in ``memory_bytes``."""
    return max(1, int(memory_bytes) // (2 * num_classes * num_params * _DOUBLE_BYTES))


def _resolve_block(block_size: int | None, memory_bytes: int | None, p: int, c: int, n: int) -> int:
    if block_size is not None and memory_bytes is not None:
        raise ValueError("give block_size or memory_bytes, not both")
    if memory_bytes is not None:
        return block_size_for(memory_bytes, p, c)
    if block_size is None:
        return max(n, 1)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 (got {block_size})")
    return block_size


def kernel_matrix(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray, *,
                  block_size: int | None = None, memory_bytes: int | None = None) -> torch.Tensor:
    """𝐊 = 𝐉𝐉ᵀ (nC × nC), built from blocks of ``block_size`` samples.

    At most two Jacobian blocks (B·C × p each) are held at once; ``memory_bytes`` sets B from that
    bound instead (:func:`block_size_for`). The kernel itself is nC × nC, the dual's inherent size.
    Each off-diagonal block pair is computed once and mirrored.
    """
    xt = _as(x, params)
    n = len(xt)
    c = outputs(model, params, xt[:1]).shape[-1]
    size = _resolve_block(block_size, memory_bytes, params.numel(), c, n)
    blocks = _blocks(n, size)
    k = torch.empty(n * c, n * c, dtype=params.dtype, device=params.device)
    for a, sa in enumerate(blocks):
        ja = jacobian(model, params, xt[sa])
        ra = slice(sa.start * c, sa.stop * c)
        for sb in blocks[a:]:
            jb = ja if sb == sa else jacobian(model, params, xt[sb])
            rb = slice(sb.start * c, sb.stop * c)
            block = ja @ jb.T
            if sb == sa:  # exactly symmetric, whatever the matmul's rounding
                k[ra, rb] = (block + block.T) / 2
            else:
                k[ra, rb] = block
                k[rb, ra] = block.T
    return k


def transpose_jacobian_product(model: nn.Module, params: torch.Tensor,
                               x: torch.Tensor | np.ndarray, alpha: torch.Tensor,
                               batch_size: int = 256) -> torch.Tensor:
    """𝐉ᵀ α = Σ_i J_iᵀ α_i with ``alpha`` of shape (n, C): one vjp per block, 𝐉 never built."""
    xt = _as(x, params)
    out = torch.zeros_like(params)
    for sl in _blocks(len(xt), batch_size):
        def f(theta: torch.Tensor, xb: torch.Tensor = xt[sl]) -> torch.Tensor:
            return outputs(model, theta, xb)

        _, pullback = vjp(f, params)
        out += pullback(alpha[sl].to(params))[0]
    return out


@dataclass
class DualResult:
    """The dual solve: α (n × C, row i for sample i), Δθ = 𝐉ᵀα, and the block size used."""

    alpha: torch.Tensor
    delta: torch.Tensor
    block_size: int


def dual_solve(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
               y: torch.Tensor | np.ndarray, forget: np.ndarray | Sequence[int], damping: float, *,
               block_size: int | None = None, memory_bytes: int | None = None) -> DualResult:
    """Solve (nλ I + Λ𝐊) α = v and return α and Δθ = 𝐉ᵀ α.

    v holds g_i on the rows of the forget samples i and zeros elsewhere; Λ is block-diagonal
    with Λ_i = diag(p_i) − p_i p_iᵀ. 𝐊 is built by :func:`kernel_matrix` under the block bound,
    the nC × nC system solved by ``torch.linalg.solve`` and Δθ obtained block by block.
    It needs every training sample's Jacobian: in a federation, a simulation-side oracle.

    Parameters
    ----------
    model, params
        As for :func:`ggn_hvp`.
    x, y
        All n training samples and labels (the forget set among them).
    forget
        Indices of the forget samples in ``x``, or a boolean mask of length n.
    damping
        λ > 0.
    block_size, memory_bytes
        Samples per Jacobian block, or the bytes two blocks may take (:func:`block_size_for`);
        neither: one block of all n samples.

    Returns
    -------
    DualResult
        α (n × C), Δθ = 𝐉ᵀα (p,) and the block size used.
    """
    if damping <= 0:
        raise ValueError(f"damping must be > 0 (got {damping})")
    xt, yt = _as(x, params), _labels(y, params)
    n = len(xt)
    logits = torch.cat([outputs(model, params, xt[sl]) for sl in _blocks(n, 1024)])
    c = logits.shape[-1]
    size = _resolve_block(block_size, memory_bytes, params.numel(), c, n)
    idx = _indices(forget, n)
    v = torch.zeros(n, c, dtype=params.dtype, device=params.device)
    v[idx] = loss_grad_outputs(logits[idx], yt[idx])
    k = kernel_matrix(model, params, xt, block_size=size)
    lam_k = apply_output_hessian(torch.softmax(logits, -1), k.reshape(n, c, n * c)).reshape(n * c, n * c)
    system = lam_k + n * damping * torch.eye(n * c, dtype=params.dtype, device=params.device)
    alpha = torch.linalg.solve(system, v.reshape(-1)).reshape(n, c)
    return DualResult(alpha, transpose_jacobian_product(model, params, xt, alpha, size), size)


def output_change(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                  x_train: torch.Tensor | np.ndarray, alpha: torch.Tensor, *,
                  block_size: int | None = None, memory_bytes: int | None = None) -> torch.Tensor:
    """Δf(x) = K(x, X) α = Σ_blocks J(x) 𝐉_bᵀ α_b for the rows of ``x``: shape (len(x), C).

    Blocks of ``block_size`` training samples (and query samples), as in :func:`kernel_matrix`.
    """
    xq, xt = _as(x, params), _as(x_train, params)
    n, c = alpha.shape
    size = _resolve_block(block_size, memory_bytes, params.numel(), c, max(n, len(xq)))
    out = torch.zeros(len(xq) * c, dtype=params.dtype, device=params.device)
    for sq in _blocks(len(xq), size):
        jq = jacobian(model, params, xq[sq])
        rq = slice(sq.start * c, sq.stop * c)
        for sb in _blocks(n, size):
            out[rq] += jq @ (jacobian(model, params, xt[sb]).T @ alpha[sb].reshape(-1).to(params))
    return out.reshape(len(xq), c)


def loss_change(logits: torch.Tensor, y: torch.Tensor | np.ndarray, delta_f: torch.Tensor) -> torch.Tensor:
    """Δℓ ≈ g(x, y)ᵀ Δf(x) per row, g = ∂ℓ/∂f at the trained model's ``logits``."""
    return (loss_grad_outputs(logits, _labels(y, logits)) * delta_f).sum(-1)


# ----------------------------------------------------------------------------- diagnostics


def linear_output_change(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                         delta: torch.Tensor) -> torch.Tensor:
    """J(x) Δθ (one jvp): the output change of the model linearised at θ̂, shape (len(x), C)."""
    xt = _as(x, params)
    return jvp(lambda theta: outputs(model, theta, xt), (params,), (delta.to(params),))[1]


def linearisation_error(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                        delta: torch.Tensor) -> float:
    """‖f(θ̂+Δθ) − f_lin(θ̂+Δθ)‖ / ‖Δf‖ over the rows of ``x`` (Frobenius norms).

    f_lin(θ̂+Δθ) = f(θ̂) + J Δθ and Δf = J Δθ; 0 for a model linear in θ (logistic regression).
    """
    xt = _as(x, params)
    lin = linear_output_change(model, params, xt, delta)
    moved = outputs(model, params + delta.to(params), xt) - outputs(model, params, xt)
    return float((moved - lin).norm() / lin.norm())


def residual_gradient_norm(model: nn.Module, params: torch.Tensor, x: torch.Tensor | np.ndarray,
                           y: torch.Tensor | np.ndarray, weight_decay: float = 0.0,
                           batch_size: int = 256) -> float:
    """‖∇L(θ̂)‖, L(θ) = (1/n) Σ_i ℓ_i + (weight_decay/2)‖θ‖²: how far θ̂ is from a stationary point.

    The removal estimate assumes ∇L(θ̂) = 0; a large residual means its first-order term is off.
    """
    grad = forget_gradient(model, params, x, y, batch_size) / len(x)
    return float((grad + weight_decay * params).norm())
