"""The arithmetic of class unlearning (docs/methods.md, "Class unlearning").

* **Class similarity** S: S_cj = mean over samples x of class c of p_j(x) under a model, for
  j ≠ c, each row normalised to sum 1 (S_cc = 0).
* **Output filter** (after MPRU): for probabilities p and forget classes C,
  p'_j = p_j + Σ_{c∈C} p_c · r^c_j for j ∉ C and p'_c = 0, with r^c the redistribution of class c
  over the remaining classes: ``proportional`` (r^c_j ∝ p_j: renormalisation) or ``similarity``
  (r^c_j ∝ S_cj). Both are p' = normalise(p · M) for one matrix M (:func:`filter_matrix`), which
  the server appends to the model as one extra array: clients train the network, every metric
  scores the filtered output.
* **TRW target**: for an input of forget class c, q_j ∝ p_j^(1/T) · S_cj^β for j ∉ C, q_c = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedunlearn.arrays import Weights

REDISTRIBUTIONS = ("proportional", "similarity")


def split_filter(weights: Weights, num_arrays: int) -> tuple[Weights, np.ndarray | None]:
    """(the network's arrays, the output filter's matrix or None) of a model with ``num_arrays`` network arrays."""
    return list(weights[:num_arrays]), (weights[num_arrays] if len(weights) > num_arrays else None)


def with_filter(network: Weights, matrix: np.ndarray | None) -> Weights:
    """The network's arrays with the output filter's matrix appended (none: the network alone)."""
    return list(network) + ([matrix] if matrix is not None else [])


def class_similarity(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """S (num_classes x num_classes): row c is the mean predicted distribution of class c's samples, off c, normalised.

    A class without samples gets a uniform row over the other classes.
    """
    s = np.zeros((num_classes, num_classes))
    for c in range(num_classes):
        row = probs[labels == c].astype(np.float64).mean(0) if np.any(labels == c) else np.ones(num_classes)
        row[c] = 0.0
        total = row.sum()
        s[c] = row / total if total > 0 else np.where(np.arange(num_classes) == c, 0.0, 1.0 / (num_classes - 1))
    return s


def filter_matrix(classes: Sequence[int], num_classes: int, redistribution: str,
                  similarity: np.ndarray | None = None) -> np.ndarray:
    """M with p' = normalise(p · M): identity on the remaining classes; row c ∈ C sends p_c where r^c says.

    ``proportional`` leaves row c zero (normalising then spreads p_c in proportion to p_j);
    ``similarity`` puts S_cj / Σ_{j∉C} S_cj in row c (a uniform row where that sum is 0).
    """
    forget = np.isin(np.arange(num_classes), classes)
    m = np.diag((~forget).astype(np.float64))
    if redistribution == "similarity":
        for c in classes:
            row = np.where(forget, 0.0, similarity[c])
            total = row.sum()
            m[c] = row / total if total > 0 else (~forget) / (~forget).sum()
    return m.astype(np.float32)


def apply_filter(probs: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """p' = normalise(p · M) for rows of probabilities (numpy)."""
    q = probs.astype(np.float64) @ matrix.astype(np.float64)
    return q / np.maximum(q.sum(1, keepdims=True), 1e-300)


def filtered_logits(logits: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """log p' for logits z: softmax, the filter, then log (so accuracy, loss and MIA read the filtered output)."""
    q = torch.softmax(logits.double(), 1) @ torch.from_numpy(matrix.astype(np.float64))
    q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
    return torch.log(q.clamp_min(1e-30)).float()


def trw_target(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int], similarity: np.ndarray,
               temperature: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """q for inputs of forget classes: q_j ∝ p_j^(1/T) · S_{label, j}^β off the forget classes, 0 on them."""
    keep = ~np.isin(np.arange(probs.shape[1]), classes)
    q = np.power(probs.astype(np.float64), 1.0 / temperature) * np.power(similarity[labels], beta) * keep
    return q / np.maximum(q.sum(1, keepdims=True), 1e-300)


def nearest_classes(similarity: np.ndarray, c: int, k: int) -> np.ndarray:
    """The ``k`` classes most similar to ``c`` under S, most similar first (ties: lower label)."""
    order = sorted((j for j in range(len(similarity)) if j != c), key=lambda j: (-similarity[c, j], j))
    return np.array(order[:k])


def calibration_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, evaluation) indices of a test set of ``n``: its first and second halves.

    With class requests the server estimates class similarity on the first half and every model
    is scored on the second, so no estimate is made on data it is evaluated on.
    """
    return np.arange(n // 2), np.arange(n // 2, n)

