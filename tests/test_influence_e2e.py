"""The influence strategy end to end: the federated primal's rounds through a real Flower simulation (Ray) started
by the CLI, against the dual solved on the pooled rows in the simulation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedunlearn.cli import main
from fedunlearn.results import RunDir, read_csv
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = ["data.name=synthetic", "data.synthetic.samples=150", "data.synthetic.features=6", "data.synthetic.classes=3",
        "data.num_clients=3", "data.partition=iid", "data.backdoor.clients=[]", "model.name=logreg",
        "train.rounds=3", "train.batch_size=16", "store.history=false", "probe.enabled=false", "probe.metric=forget_acc",
        "forgetting.min_original_test_acc=0", "forgetting.min_original_forget_acc=0",
        "forgetting.check_separation=false", "forgetting.recovery_rounds=0",
        "forgetting.influence.damping=0.05", "forgetting.influence.tol=1e-10", "forgetting.influence.max_iter=200",
        "forget=[{clients=[1], samples=0.3}]", "simulation.num_cpus=1",
        "forgetting.strategies=['influence', { strategy = 'influence', label = 'dual', form = 'dual' }]"]


def flat(path) -> np.ndarray:
    weights, _ = RunDir(path).load_checkpoint()
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def test_federated_primal_over_ray_matches_the_pooled_dual(tmp_path):
    out = tmp_path / "influence"
    args = [a for o in TINY for a in ("--set", o)]
    assert main(["run", str(ROOT / "experiments/default.toml"), *args, "--out", str(out)]) == 0
    by = {r["strategy"]: r for r in read_csv(out / "summary.csv")}
    primal, dual = by["influence"], by["dual"]
    found = re.search(r"primal: (\d+) CG iterations \(\1 hvp rounds over 3 clients, n (\d+), \+ 1 lossgrad round "
                      r"over 1 holders\), relative residual (\S+), converged", primal["notes"])
    assert found, primal["notes"]
    iterations, n = int(found.group(1)), int(found.group(2))
    assert n == 120 and float(found.group(3)) <= 1e-10  # every client's rows (the test fifth apart)
    assert int(primal["rounds"]) == iterations + 1 and int(dual["rounds"]) == 0
    assert float(primal["client_epochs"]) == 1 + 3 * iterations  # the holder once, then all 3 per iteration
    assert float(primal["bytes_exchanged"]) > 0
    assert "simulation-side oracle" in dual["notes"]
    seed = out / "seed-0"
    original = flat(seed / "train")
    d_primal = flat(seed / "strategies" / "influence") - original
    d_dual = flat(seed / "strategies" / "dual") - original
    assert np.linalg.norm(d_dual) > 1e-3 * np.linalg.norm(original)  # a step the float32 checkpoints can resolve
    assert np.linalg.norm(d_primal - d_dual) / np.linalg.norm(d_dual) < 1e-4
