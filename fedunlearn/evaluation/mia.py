"""Membership inference on the forget set.

* **MIA-efficacy** (the SVC confidence attack of the OPTML unlearning code, ``SVC_MIA``): an RBF SVC
  (C = 3, gamma = "auto") learns the true-class confidence of members (a retain subset the size of
  the test set) against non-members (the test set); MIA-efficacy is the share of forget samples it
  calls non-members. Higher means the model treats them more like unseen data.
* **Yeom loss attack** (Yeom et al. 2018): a sample is called a member when its loss is at most the
  mean retain loss; ``mia_yeom`` is the share of forget samples called members.

In non-IID federations only the gap to the retrained model's value means anything.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import SVC


def true_class_confidence(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    probs = torch.softmax(logits, dim=1)
    return probs[torch.arange(len(labels)), torch.from_numpy(labels)].numpy().astype(np.float64)


def per_sample_loss(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="none").numpy()


def svc_mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray,
                     rng: np.random.Generator) -> float:
    """Share of forget samples an SVC trained on retain (members) vs test (non-members) calls non-members."""
    n = min(len(conf_test), len(conf_retain))
    members = conf_retain[rng.choice(len(conf_retain), size=n, replace=False)]
    x = np.concatenate([members, conf_test[:n]])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(conf_forget[:, None]).mean())


def yeom_member_rate(loss_retain: np.ndarray, loss_forget: np.ndarray) -> float:
    """Share of forget samples whose loss is at most the mean retain loss."""
    return float((loss_forget <= loss_retain.mean()).mean())
