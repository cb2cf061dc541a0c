"""The federation before training: each client's sample and class counts, as a table and a figure.

The figure is the per-client label distribution as stacked bars (the picture Flower Datasets'
``plot_label_distributions`` draws), with the poisoned samples and the forgotten clients marked.
``fedunlearn data`` prints and draws it; every training run saves it beside its rounds.csv.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedunlearn.data import FederatedData  # noqa: E402


def client_rows(data: FederatedData, forgotten: list[int]) -> list[dict]:
    """One row per client: samples, poisoned samples, forgotten or not, and the count of each class."""
    rows = []
    for cid, client in enumerate(data.clients):
        counts = np.bincount(client.y_train, minlength=data.num_classes)
        rows.append({"client": cid, "samples": client.num_examples, "poisoned": len(client.poisoned),
                     "forgotten": cid in forgotten, **{f"class {k}": int(c) for k, c in enumerate(counts)}})
    return rows


def client_table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with a total row (classes a client lacks show as 0)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("yes" if v is True else "" if v is False else str(v) for v in r.values()) + " |")
    total = {c: sum(r[c] for r in rows) for c in columns if c not in ("client", "forgotten")}
    lines.append("| total | " + " | ".join(str(total.get(c, "")) for c in columns[1:]) + " |")
    return "\n".join(lines)


def draw_label_distribution(data: FederatedData, forgotten: list[int], path: Path, title: str) -> Path:
    """Stacked bars of each client's class counts; poisoned samples hatched, forgotten clients starred."""
    rows = client_rows(data, forgotten)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(rows) + 3), 4.8))
    cmap = plt.get_cmap("tab10" if data.num_classes <= 10 else "tab20")
    x = np.arange(len(rows))
    bottoms = np.zeros((data.num_classes + 1, len(rows)))  # where each class's segment starts
    for k in range(data.num_classes):
        counts = np.array([r[f"class {k}"] for r in rows], dtype=float)
        ax.bar(x, counts, bottom=bottoms[k], color=cmap(k % cmap.N), label=f"class {k}", width=0.8)
        bottoms[k + 1] = bottoms[k] + counts
    poisoned = [(cid, c) for cid, c in enumerate(data.clients) if len(c.poisoned)]
    for i, (cid, client) in enumerate(poisoned):  # inside the segment of the label they were given
        target = int(client.y_train[client.poisoned[0]])
        ax.bar(cid, len(client.poisoned), bottom=bottoms[target][cid], fill=False, hatch="///", edgecolor="black",
               lw=0.6, width=0.8, label=None if i else "poisoned samples (relabelled to this class)")
    ax.set_xticks(x, [f"{r['client']}*" if r["forgotten"] else str(r["client"]) for r in rows],
                  fontsize=8 if len(rows) <= 40 else 5)
    ax.set_xlabel("client (* = forgotten)")
    ax.set_ylabel("training samples (count, by the label trained on)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
