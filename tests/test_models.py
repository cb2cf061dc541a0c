"""Models: shapes for their inputs, no buffers, seeded initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.config import ModelConfig
from fedunlearn.models import MODELS, build_model
from fedunlearn.settings import ConfigError
from fedunlearn.training import get_weights, set_weights


@pytest.mark.parametrize("name, shape", [("mlp", (20,)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)),
                                         ("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("resnet_gn", (3, 32, 32))])
def test_forward_shape_and_no_buffers(name, shape):
    model = build_model(ModelConfig(name=name), shape, 10, seed=0)
    assert model(torch.zeros((2, *shape))).shape == (2, 10)
    assert list(model.buffers()) == []  # every state entry is a trained parameter
    assert len(model.state_dict()) == len(list(model.parameters()))


def test_seeded_init_and_weight_round_trip():
    a = get_weights(build_model(ModelConfig(), (1, 8, 8), 10, seed=0))
    b = get_weights(build_model(ModelConfig(), (1, 8, 8), 10, seed=0))
    c = build_model(ModelConfig(), (1, 8, 8), 10, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], get_weights(c)[0])
    set_weights(c, a)
    assert all(np.array_equal(x, y) for x, y in zip(a, get_weights(c), strict=True))


def test_cnn_refuses_tabular_inputs():
    with pytest.raises(ConfigError, match="model.name"):
        build_model(ModelConfig(name="cnn"), (20,), 3, seed=0)


def test_registry_lists_the_built_in_models():
    assert MODELS.names() == ["cnn", "logreg", "mlp", "rbm", "resnet_gn"]
