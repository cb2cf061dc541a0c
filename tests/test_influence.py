"""Influence functions (docs/methods.md, "Influence functions"): primal CG against the dual kernel
solve, the Gauss-Newton product against a brute-force matrix, the federated CG, block sizes, and
leave-one-out retraining of a convex model (Koh & Liang's check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn import influence as inf
from fedunlearn.data.sources import load_digits_dataset
from fedunlearn.models import HiddenWidth, cnn, logreg, mlp, resnet_gn

N_TRAIN = 300
LAMBDA = 1e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    ds = load_digits_dataset(None, 0)
    return (torch.as_tensor(ds.x_train[:N_TRAIN]).double(), torch.as_tensor(ds.y_train[:N_TRAIN]),
            torch.as_tensor(ds.x_test).double(), torch.as_tensor(ds.y_test))


def regularised_loss(model: nn.Module, theta: torch.Tensor, x, y, weights=None) -> torch.Tensor:
    """(1/n) Σ_i w_i ℓ_i + (λ/2)‖θ‖², n = len(x) (w_i = 0 drops sample i, keeping the 1/n)."""
    losses = nn.functional.cross_entropy(inf.outputs(model, theta, x), y, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.sum() / len(x) + 0.5 * LAMBDA * theta @ theta


def minimise(model: nn.Module, theta: torch.Tensor, x, y, weights=None) -> torch.Tensor:
    """The regularised objective's minimum by full-batch L-BFGS in float64 (convex for logreg)."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = regularised_loss(model, theta, x, y, weights)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return theta.detach()


@pytest.fixture(scope="module")
def trained_logreg(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = logreg((1, 8, 8), 10, None)
    return model, minimise(model, inf.flat_params(model), x, y)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    """A tiny MLP (hidden 8: 64 → 16 → 8 → 10, p = 1,266) after a few hundred GD steps."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = mlp((1, 8, 8), 10, HiddenWidth(8))
    theta = inf.flat_params(model).requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        regularised_loss(model, theta, x, y).backward()
        opt.step()
    return model, theta.detach()


@pytest.mark.parametrize("which", ["trained_logreg", "trained_mlp"])
def test_primal_and_dual_agree(which, digits, request):
    model, theta = request.getfixturevalue(which)
    x, y, _, _ = digits
    forget = np.arange(0, N_TRAIN, 15)  # 20 samples
    primal = inf.primal_delta(model, theta, x, y, forget, LAMBDA, batch_size=128, tol=1e-12)
    dual = inf.dual_solve(model, theta, x, y, forget, LAMBDA, block_size=100)
    assert primal.converged and theta.numel() in (650, 1266)
    assert rel(primal.solution, dual.delta) < 1e-5  # measured: ~1e-12 for both models
    # the dual's output change on test points is J(x)Δθ, whatever way it is computed
    xq = digits[2][:7]
    df = inf.output_change(model, theta, xq, x, dual.alpha, block_size=64)
    assert rel(df, inf.linear_output_change(model, theta, xq, primal.solution)) < 1e-8


def brute_force_ggn(model: nn.Module, theta: torch.Tensor, x, y) -> torch.Tensor:
    """H = (1/n) Σ J_iᵀ Λ_i J_i as an explicit p × p matrix, per sample with autograd.functional
    (J_i from ``jacobian``, Λ_i as the Hessian of cross-entropy in the logits): no torch.func."""
    from torch.autograd.functional import hessian, jacobian

    p = theta.numel()
    h = torch.zeros(p, p, dtype=theta.dtype)
    for xi, yi in zip(x, y, strict=True):
        ji = jacobian(lambda t, xi=xi: inf.outputs(model, t, xi[None])[0], theta)
        logits = inf.outputs(model, theta, xi[None])[0].detach()
        li = hessian(lambda f, yi=yi: nn.functional.cross_entropy(f[None], yi[None]), logits)
        h += ji.T @ li @ ji
    return h / len(x)


def test_ggn_hvp_equals_a_brute_force_matrix():
    torch.manual_seed(1)
    model = mlp((4,), 3, HiddenWidth(2))  # 4 → 4 → 2 → 3: p = 39
    theta = inf.flat_params(model) + 0.3 * torch.randn(39, dtype=torch.float64)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    h = brute_force_ggn(model, theta, x, y)
    hvp = inf.ggn_hvp(model, theta, x, batch_size=5)  # three batches, the last short
    columns = torch.stack([hvp(e) for e in torch.eye(39, dtype=torch.float64)], 1)
    assert torch.allclose(columns, h, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(h).min() > -1e-12  # positive semi-definite
    # Λ_i as implemented is the Hessian of cross-entropy in the logits
    f = torch.randn(3, dtype=torch.float64)
    lam = torch.autograd.functional.hessian(lambda z: nn.functional.cross_entropy(z[None], y[:1]), f)
    u = torch.randn(3, dtype=torch.float64)
    assert torch.allclose(inf.apply_output_hessian(torch.softmax(f, -1)[None], u[None])[0], lam @ u)


def test_ggn_of_logistic_regression_is_the_exact_hessian():
    """For a model linear in θ the Gauss-Newton matrix is the loss's Hessian (brute force, p = 15)."""
    torch.manual_seed(2)
    model = logreg((4,), 3, None)
    theta = inf.flat_params(model)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    exact = torch.autograd.functional.hessian(
        lambda t: nn.functional.cross_entropy(inf.outputs(model, t, x), y), theta)
    hvp = inf.ggn_hvp(model, theta, x)
    assert torch.allclose(torch.stack([hvp(e) for e in torch.eye(15, dtype=torch.float64)], 1), exact,
                          rtol=1e-10, atol=1e-13)


def test_conjugate_gradient_solves_a_damped_spd_system():
    torch.manual_seed(3)
    a = torch.randn(30, 20, dtype=torch.float64)
    a = a.T @ a / 30  # PSD, rank 20
    rhs = torch.randn(20, dtype=torch.float64)
    res = inf.conjugate_gradient(lambda v: a @ v, rhs, damping=0.1, tol=1e-12)
    exact = torch.linalg.solve(a + 0.1 * torch.eye(20, dtype=torch.float64), rhs)
    assert res.converged and res.iterations <= 40 and rel(res.solution, exact) < 1e-10
    assert len(res.residuals) == res.iterations + 1 and res.residuals[-1] <= 1e-12 * float(rhs.norm())
    short = inf.conjugate_gradient(lambda v: a @ v, rhs, damping=0.1, tol=1e-12, max_iter=3)
    assert not short.converged and short.iterations == 3


def test_federated_cg_equals_centralized(trained_mlp, digits):
    """H v = Σ_k (n_k/n) H_k v over a three-client split, each client's product on its own rows."""
    model, theta = trained_mlp
    x, y, _, _ = digits
    parts = [np.arange(0, 40), np.arange(40, 170), np.arange(170, N_TRAIN)]  # 40, 130, 130 samples
    forget = np.arange(0, 10)  # on client 0
    central = inf.primal_delta(model, theta, x, y, forget, LAMBDA, tol=1e-12)
    clients = [inf.ggn_hvp(model, theta, x[part], batch_size=64) for part in parts]
    hvp = inf.weighted_hvp(clients, [len(part) / N_TRAIN for part in parts])
    b = inf.forget_gradient(model, theta, x[forget], y[forget])  # the holder's own computation
    federated = inf.conjugate_gradient(hvp, b / N_TRAIN, LAMBDA, tol=1e-12)
    assert federated.converged
    assert rel(federated.solution, central.solution) < 1e-9


def test_kernel_block_size_does_not_change_the_result(trained_mlp, digits):
    model, theta = trained_mlp
    x, y = digits[0][:60], digits[1][:60]
    forget = [3, 17, 41]
    k_small = inf.kernel_matrix(model, theta, x, block_size=7)  # 9 blocks, the last of 4
    k_whole = inf.kernel_matrix(model, theta, x)
    assert torch.allclose(k_small, k_whole, rtol=1e-12, atol=1e-12) and torch.equal(k_small, k_small.T)
    a = inf.dual_solve(model, theta, x, y, forget, LAMBDA, block_size=7)
    # the memory bound picks the block size: two Jacobian blocks of B·C·p doubles
    bound = 2 * 25 * 10 * theta.numel() * 8
    b = inf.dual_solve(model, theta, x, y, forget, LAMBDA, memory_bytes=bound)
    assert (a.block_size, b.block_size) == (7, 25)
    assert rel(a.alpha, b.alpha) < 1e-10 and rel(a.delta, b.delta) < 1e-10
    assert torch.count_nonzero(a.alpha.abs() > 0) > len(forget) * 10  # α spreads beyond S's rows
    with pytest.raises(ValueError, match="not both"):
        inf.kernel_matrix(model, theta, x, block_size=7, memory_bytes=bound)


def test_linearisation_error_and_residual_gradient(trained_logreg, trained_mlp, digits):
    x, y, xq, _ = digits
    model, theta = trained_logreg
    delta = inf.primal_delta(model, theta, x, y, np.arange(10), LAMBDA, tol=1e-12).solution
    assert inf.linearisation_error(model, theta, xq, delta) < 1e-10  # f is linear in θ
    assert inf.residual_gradient_norm(model, theta, x, y, weight_decay=LAMBDA) < 1e-7  # measured 6e-9
    assert inf.residual_gradient_norm(model, theta, x, y) > 1e-3  # without the L2 term: not stationary
    model, theta = trained_mlp
    delta = inf.primal_delta(model, theta, x, y, np.arange(10), LAMBDA, tol=1e-12).solution
    assert 1e-6 < inf.linearisation_error(model, theta, xq, delta) < 1


@pytest.mark.parametrize("name", ["cnn", "resnet_gn"])
def test_any_registry_model(name, digits):
    """Convolutions, pooling and GroupNorm through torch.func: symmetric products, primal = dual."""
    torch.manual_seed(4)
    model = cnn((1, 8, 8), 10, HiddenWidth(8)) if name == "cnn" else resnet_gn((1, 8, 8), 10, None)
    theta = inf.flat_params(model)
    x, y = digits[0][:6], digits[1][:6]
    hvp = inf.ggn_hvp(model, theta, x, batch_size=4)
    u, v = torch.randn_like(theta), torch.randn_like(theta)
    assert abs(float(u @ hvp(v) - v @ hvp(u))) < 1e-10 * float(u.norm() * v.norm())
    primal = inf.primal_delta(model, theta, x, y, [0, 1], 0.1, batch_size=4, tol=1e-12, max_iter=200)
    dual = inf.dual_solve(model, theta, x, y, [0, 1], 0.1, block_size=4)
    assert primal.converged and rel(primal.solution, dual.delta) < 1e-5


def test_koh_liang_leave_one_out_on_logistic_regression(trained_logreg, digits):
    """Predicted vs actual change of one test point's loss when each of 20 samples is left out.

    The objective is (1/n) Σ ℓ_i + (λ/2)‖θ‖², so H = (1/n) Σ J_iᵀΛ_iJ_i + λI is its exact Hessian
    and Δθ = (1/n) H⁻¹ J_jᵀ g_j is the influence estimate of dropping sample j's term (the 1/n kept,
    as in the definition). Like Koh & Liang (Fig. 2) we compare the change in a test loss, the
    quantity influence is used for: the test point is the one the model gets most wrong, where
    removals matter most; a scalar per removal makes Pearson's r meaningful (Δθ vectors would need
    a projection chosen arbitrarily). Actual: warm-started L-BFGS on the objective without j.
    """
    model, theta = trained_logreg
    x, y, xq, yq = digits
    logits = inf.outputs(model, theta, xq)
    worst = int(nn.functional.cross_entropy(logits, yq, reduction="none").argmax())
    x_test, y_test = xq[worst:worst + 1], yq[worst:worst + 1]

    def test_loss(t: torch.Tensor) -> float:
        return float(nn.functional.cross_entropy(inf.outputs(model, t, x_test), y_test))

    removed = np.random.default_rng(0).choice(N_TRAIN, 20, replace=False)
    predicted, actual, errors = [], [], []
    for j in removed:
        delta = inf.primal_delta(model, theta, x, y, [j], LAMBDA, tol=1e-12).solution
        df = inf.linear_output_change(model, theta, x_test, delta)
        predicted.append(float(inf.loss_change(inf.outputs(model, theta, x_test), y_test, df)))
        weights = torch.ones(N_TRAIN, dtype=torch.float64)
        weights[j] = 0
        retrained = minimise(model, theta, x, y, weights)
        actual.append(test_loss(retrained) - test_loss(theta))
        errors.append(rel(delta, retrained - theta))
    r = float(np.corrcoef(predicted, actual)[0, 1])
    assert r >= 0.95, (r, predicted, actual)
    assert np.median(errors) < 0.25  # Δθ itself, sample by sample (measured median ~0.10: one Newton step)
