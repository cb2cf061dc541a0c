"""Membership inference on the forget set.

* **MIA-efficacy** (the SVC confidence attack of the OPTML unlearning code, ``SVC_MIA``): an RBF SVC
  (C = 3, gamma = "auto") learns the true-class confidence of members (a retain subset the size of
  the test set) against non-members (the test set), each capped at :data:`SVC_MAX_SAMPLES` drawn
  at random (an SVC's fit grows with the square of its samples: a 50,000-sample test set took
  hours); MIA-efficacy is the share of forget samples it calls non-members. Higher means the model
  treats them more like unseen data.
* **Yeom loss attack** (Yeom et al. 2018): a sample is called a member when its loss is at most the
  mean retain loss; ``mia_yeom`` is the share of forget samples called members.

* **MIA-NN** (class requests; docs/methods.md, "Class unlearning"): features of a sample are the
  model's probabilities on the ``MIA_NN_NEIGHBOURS`` classes nearest to its class; members are
  forget-class train samples, non-members forget-class test samples; a logistic-regression
  attacker (features standardised) is scored by 5-fold cross-validation on balanced subsets, and
  MIA-NN is its mean accuracy (0.5: it cannot tell them apart).

In non-IID federations only the gap to the retrained model's value means anything.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

SVC_MAX_SAMPLES = 5000  # members, and as many non-members: a fit of seconds
MIA_NN_NEIGHBOURS = 3
MIA_NN_FOLDS = 5


def true_class_confidence(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    probs = torch.softmax(logits, dim=1)
    return probs[torch.arange(len(labels)), torch.from_numpy(labels)].numpy().astype(np.float64)


def per_sample_loss(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="none").numpy()


def svc_mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray,
                     rng: np.random.Generator) -> float:
    """Share of forget samples an SVC trained on retain (members) vs test (non-members) calls non-members."""
    n = min(len(conf_test), len(conf_retain), SVC_MAX_SAMPLES)
    members = conf_retain[rng.choice(len(conf_retain), size=n, replace=False)]
    capped = len(conf_test) > SVC_MAX_SAMPLES  # below the cap, the first n as always
    non_members = conf_test[rng.choice(len(conf_test), size=n, replace=False)] if capped else conf_test[:n]
    x = np.concatenate([members, non_members])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(conf_forget[:, None]).mean())


def yeom_member_rate(loss_retain: np.ndarray, loss_forget: np.ndarray) -> float:
    """Share of forget samples whose loss is at most the mean retain loss."""
    return float((loss_forget <= loss_retain.mean()).mean())


def neighbour_mia(members: np.ndarray, non_members: np.ndarray, rng: np.random.Generator) -> float:
    """Mean 5-fold accuracy of a logistic regression telling ``members`` from ``non_members`` (balanced).

    The larger group is subsampled to the smaller one's size; NaN when either has fewer samples
    than folds.
    """
    n = min(len(members), len(non_members))
    if n < MIA_NN_FOLDS:
        return float("nan")
    x = np.concatenate([members[rng.choice(len(members), n, replace=False)],
                        non_members[rng.choice(len(non_members), n, replace=False)]])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    folds = StratifiedKFold(MIA_NN_FOLDS, shuffle=True, random_state=int(rng.integers(2**31)))
    attacker = make_pipeline(StandardScaler(), LogisticRegression())
    return float(cross_val_score(attacker, x, y, cv=folds, scoring="accuracy").mean())
