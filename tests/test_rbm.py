"""Bernoulli RBM (docs/methods.md, "Generative task"): energies by hand, log Z exact and by AIS,
the CD gradient, seeded sampling, and a short training run on binarised digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sklearn.datasets import load_digits

from fedunlearn.rbm import (
    RBM,
    ContrastiveDivergence,
    RBMSettings,
    base_rate_visible_bias,
    cd_loss,
    log_likelihood,
    log_partition_ais,
    log_partition_exact,
    rbm,
    sample,
)
from fedunlearn.settings import SettingError

# The hand-chosen RBM: 3 visible, 2 hidden units.
HAND_W = [[0.5, -1.0], [0.25, 0.75], [-0.5, 0.3]]
HAND_A = [0.1, -0.2, 0.3]
HAND_B = [0.4, -0.6]
HIDDEN_STATES = [(0, 0), (0, 1), (1, 0), (1, 1)]
VISIBLE_STATES = list(itertools.product([0, 1], repeat=3))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_rbm(dtype=torch.float64) -> RBM:
    model = RBM(3, 2).to(dtype)
    with torch.no_grad():
        model.W.copy_(torch.tensor(HAND_W, dtype=torch.float64))
        model.a.copy_(torch.tensor(HAND_A, dtype=torch.float64))
        model.b.copy_(torch.tensor(HAND_B, dtype=torch.float64))
    return model


def energy(v, h) -> float:
    """E(v, h) = −aᵀv − bᵀh − vᵀWh, written out."""
    return (-sum(HAND_A[i] * v[i] for i in range(3)) - sum(HAND_B[j] * h[j] for j in range(2))
            - sum(v[i] * HAND_W[i][j] * h[j] for i in range(3) for j in range(2)))


def random_rbm(visible: int, hidden: int, std: float, seed: int) -> RBM:
    torch.manual_seed(seed)
    model = RBM(visible, hidden, init_std=std)
    with torch.no_grad():
        model.a.normal_(0, 0.5)
        model.b.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """The 1797 sklearn digits, binarised at pixel >= 8, shape (1797, 64)."""
    return torch.as_tensor(load_digits().data >= 8, dtype=torch.float32)


def train(model: RBM, data: torch.Tensor, objective: ContrastiveDivergence, epochs: int, seed: int) -> RBM:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), 32):
            optimiser.zero_grad()
            objective(model, data[order[start:start + 32]], generator).backward()
            optimiser.step()
    return model


@pytest.fixture(scope="module")
def digits_rbm(digits) -> RBM:
    """An RBM with 16 hidden units after 5 epochs of CD-1 on the digits (~0.5 s)."""
    torch.manual_seed(0)
    return train(RBM(64, 16), digits, ContrastiveDivergence(k=1), epochs=5, seed=0)


def test_free_energy_and_exact_log_partition_by_hand():
    model = hand_rbm()
    states = torch.tensor(VISIBLE_STATES, dtype=torch.float64)
    brute_free_energy = [-math.log(sum(math.exp(-energy(v, h)) for h in HIDDEN_STATES))
                         for v in VISIBLE_STATES]
    torch.testing.assert_close(model.free_energy(states), torch.tensor(brute_free_energy, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # F(0) = −softplus(0.4) − softplus(−0.6), by hand.
    assert model(torch.zeros(1, 3)).item() == pytest.approx(-1.3505032, abs=1e-6)

    brute_log_z = math.log(sum(math.exp(-energy(v, h)) for v in VISIBLE_STATES for h in HIDDEN_STATES))
    assert log_partition_exact(model) == pytest.approx(brute_log_z, abs=1e-12)
    assert log_partition_exact(model, block=1) == pytest.approx(brute_log_z, abs=1e-12)

    log_p = log_likelihood(model, states, log_partition_exact(model))
    assert log_p.dtype == torch.float64
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_log_z_is_float64_for_a_float32_model():
    log_z = log_partition_exact(hand_rbm(torch.float32))
    assert log_z == pytest.approx(log_partition_exact(hand_rbm()), abs=1e-6)
    states = torch.tensor(VISIBLE_STATES, dtype=torch.float32)
    assert log_likelihood(hand_rbm(torch.float32), states, log_z).dtype == torch.float64


def test_inputs_are_flattened():
    model = random_rbm(64, 5, 0.1, seed=0)
    images = torch.bernoulli(torch.full((4, 1, 8, 8), 0.5))
    flat = images.reshape(4, 64)
    assert torch.equal(model(images), model.free_energy(flat))
    assert torch.equal(model.hidden_probs(images), model.hidden_probs(flat))
    with pytest.raises(ValueError, match="64 units"):
        model.free_energy(torch.zeros(2, 63))


def test_ais_matches_exact_log_partition(digits, digits_rbm):
    exact = log_partition_exact(digits_rbm)
    estimate = log_partition_ais(digits_rbm, generator=torch.Generator().manual_seed(0),
                                 base_visible_bias=base_rate_visible_bias(digits))
    assert abs(estimate - exact) < 0.5  # measured 0.01 nats


def test_ais_with_uniform_base_on_random_weights():
    model = random_rbm(32, 16, 1.0, seed=1)
    estimate = log_partition_ais(model, runs=100, steps=1000, generator=torch.Generator().manual_seed(0))
    assert abs(estimate - log_partition_exact(model)) < 0.5  # measured 0.02 nats


def test_cd1_gradient_is_data_term_minus_model_term():
    model = random_rbm(6, 4, 1.0, seed=2).double()
    v_data = torch.bernoulli(torch.full((5, 6), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    loss, v_model = cd_loss(model, v_data, 1, torch.Generator().manual_seed(4))
    loss.backward()
    assert not v_model.requires_grad and set(v_model.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(v_model, v_data)  # else both terms cancel and the test proves nothing

    p_data, p_model = model.hidden_probs(v_data).detach(), model.hidden_probs(v_model).detach()
    n = len(v_data)
    expected_w = -(v_data.T @ p_data / n - v_model.T @ p_model / n)
    expected_a = -(v_data.mean(0) - v_model.mean(0))
    expected_b = -(p_data.mean(0) - p_model.mean(0))
    assert expected_w.abs().max() > 1e-2
    torch.testing.assert_close(model.W.grad, expected_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.a.grad, expected_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.b.grad, expected_b, rtol=0, atol=1e-6)


def test_persistent_chains_start_the_gibbs_steps():
    model = random_rbm(6, 4, 1.0, seed=2)
    v_data = torch.ones(5, 6)
    chains = torch.zeros(7, 6)
    _, v_model = cd_loss(model, v_data, 2, torch.Generator().manual_seed(5), chains=chains)
    assert torch.equal(v_model, model.gibbs(chains, 2, torch.Generator().manual_seed(5)))
    assert v_model.shape == (7, 6)


def test_contrastive_divergence_keeps_and_resizes_its_chains():
    model = random_rbm(6, 4, 1.0, seed=2)
    batches = [torch.bernoulli(torch.full((n, 6), 0.5), generator=torch.Generator().manual_seed(n))
               for n in (5, 3, 8)]

    def chain_history(seed: int) -> list[torch.Tensor]:
        objective, generator, history = ContrastiveDivergence(k=1, persistent=True), torch.Generator().manual_seed(seed), []
        for batch in batches:
            objective(model, batch, generator)
            history.append(objective.chains.clone())
        return history

    first = chain_history(0)
    # The first call's chains start from the batch itself.
    assert torch.equal(first[0], model.gibbs(batches[0], 1, torch.Generator().manual_seed(0)))
    assert [c.shape[0] for c in first] == [5, 3, 8]
    assert all(torch.equal(x, y) for x, y in zip(first, chain_history(0), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, chain_history(1), strict=True))

    plain = ContrastiveDivergence(k=1)
    plain(model, batches[0], torch.Generator().manual_seed(0))
    assert plain.chains is None


def test_gibbs_sampling_is_seeded():
    model = random_rbm(20, 8, 1.0, seed=3)
    start = torch.zeros(10, 20)
    global_state = torch.get_rng_state()
    run = lambda seed: model.gibbs(start, 5, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is left alone

    draws = sample(model, 10, 5, torch.Generator().manual_seed(0))
    assert draws.shape == (10, 20) and set(draws.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(draws, sample(model, 10, 5, torch.Generator().manual_seed(0)))
    assert not torch.equal(draws, sample(model, 10, 5, torch.Generator().manual_seed(1)))
    assert torch.equal(sample(model, 10, 0, None, init=start), start)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_samples_a_cuda_model():
    model = random_rbm(20, 8, 1.0, seed=3).cuda()
    run = lambda seed: model.gibbs(torch.zeros(10, 20), 3, torch.Generator().manual_seed(seed))  # noqa: E731
    draws = run(0)
    assert draws.is_cuda and torch.equal(draws, run(0)) and not torch.equal(draws, run(1))
    objective = ContrastiveDivergence(k=1, persistent=True)
    for n in (5, 3):
        objective(model, torch.ones(n, 20), torch.Generator().manual_seed(n)).backward()
    assert objective.chains.is_cuda and objective.chains.shape == (3, 20)


def test_exact_log_partition_refuses_more_than_20_hidden_units():
    with pytest.raises(ValueError, match="hidden"):
        log_partition_exact(RBM(4, 21))


def test_registry_builder_and_settings():
    torch.manual_seed(0)
    model = rbm((1, 8, 8), 10, RBMSettings(hidden=5, init_std=0.1))
    assert list(model.state_dict()) == ["W", "a", "b"] and list(model.buffers()) == []
    assert model.W.shape == (64, 5) and model.a.shape == (64,) and model.b.shape == (5,)
    assert not model.a.any() and not model.b.any()
    assert 0.05 < model.W.std().item() < 0.15
    torch.manual_seed(0)
    assert torch.equal(rbm((1, 8, 8), 10, RBMSettings(hidden=5, init_std=0.1)).W, model.W)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2,)

    RBMSettings().validate()
    with pytest.raises(SettingError, match="hidden"):
        RBMSettings(hidden=0).validate()
    with pytest.raises(SettingError, match="init_std"):
        RBMSettings(init_std=0.0).validate()


@pytest.mark.parametrize("persistent", [False, True])
def test_short_cd_training_raises_the_log_likelihood(digits, persistent):
    torch.manual_seed(0)
    model = RBM(64, 16)
    initial = log_likelihood(model, digits, log_partition_exact(model)).mean().item()
    train(model, digits, ContrastiveDivergence(k=1, persistent=persistent), epochs=3, seed=0)
    trained = log_likelihood(model, digits, log_partition_exact(model)).mean().item()
    assert trained > initial + 5  # measured about −44 -> −27 nats
