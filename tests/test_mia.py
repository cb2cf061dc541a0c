"""Membership inference: a model trained on the forget samples scores lower MIA-efficacy on them."""

from __future__ import annotations

import numpy as np

from fedunlearn.config import ForgetRequest, load_config
from fedunlearn.data import build_federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.evaluation.metrics import METRICS, ModelView
from fedunlearn.models import build_model
from fedunlearn.training import get_weights, train_local


def test_training_on_the_forget_samples_lowers_mia_efficacy_on_them():
    cfg = load_config(None, ["data.name=synthetic", "data.synthetic.samples=800", "data.synthetic.features=40",
                             "data.synthetic.classes=4", "data.num_clients=4", "data.partition=iid",
                             "model.name=mlp", "model.mlp.hidden=64"])
    data = build_federated_data(cfg.data, cfg.seed)
    scorer = Scorer(cfg, data, [ForgetRequest([0], round=1)])

    def trained_on(x, y):
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed=1)
        train_local(model, x, y, epochs=150, batch_size=32, lr=0.05, momentum=0.9, seed=0)
        return get_weights(model)

    x_retain, y_retain = scorer.x_retain, scorer.y_retain
    saw = trained_on(np.concatenate([x_retain, data.clients[0].x_train]),
                     np.concatenate([y_retain, data.clients[0].y_train]))
    never = trained_on(x_retain, y_retain)
    view_saw, view_never = ModelView.of(scorer, saw), ModelView.of(scorer, never)
    mia_saw = METRICS["mia_efficacy"](view_saw, view_never)
    mia_never = METRICS["mia_efficacy"](view_never, view_never)
    assert mia_saw < mia_never
    # The loss attack agrees: more of the forget samples look like members to the model that saw them.
    assert METRICS["mia_yeom"](view_saw, view_never) > METRICS["mia_yeom"](view_never, view_never)
    # And the distances to the "retrained" model are zero for itself only.
    assert METRICS["weight_dist_to_retrain"](view_never, view_never) == 0.0
    assert METRICS["pred_kl_to_retrain"](view_saw, view_never) > 0.0
