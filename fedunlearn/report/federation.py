"""The federation before training: each client's sample and class counts, as a table and a figure.

The figure is the per-client label distribution as stacked bars (the picture Flower Datasets'
``plot_label_distributions`` draws), with the poisoned samples and the forgotten clients marked.
``fedunlearn data`` prints and draws it; every training run saves it beside its rounds.csv. A
federation of more than :data:`MAX_BARS` clients is drawn through a sample of them (the forgotten
and poisoned clients first, then the lowest ids), and the figure says so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedunlearn.data import FederatedData  # noqa: E402

MAX_BARS = 60  # more bars than this are unreadable (and a 10,000-client figure takes minutes to draw)


def client_rows(data: FederatedData, forgotten: list[int], clients: list[int] | None = None) -> list[dict]:
    """One row per client (of ``clients``, default all): samples, poisoned samples, forgotten or not, class counts."""
    rows = []
    for cid in range(len(data.clients)) if clients is None else clients:
        client = data.clients[cid]
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
    shown = shown_clients(data, forgotten)
    rows = client_rows(data, forgotten, shown)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(rows) + 3), 4.8))
    cmap = plt.get_cmap("tab10" if data.num_classes <= 10 else "tab20")
    x = np.arange(len(rows))
    bottoms = np.zeros((data.num_classes + 1, len(rows)))  # where each class's segment starts
    for k in range(data.num_classes):
        counts = np.array([r[f"class {k}"] for r in rows], dtype=float)
        ax.bar(x, counts, bottom=bottoms[k], color=cmap(k % cmap.N), label=f"class {k}", width=0.8)
        bottoms[k + 1] = bottoms[k] + counts
    poisoned = [(i, data.clients[cid]) for i, cid in enumerate(shown) if len(data.clients[cid].poisoned)]
    for j, (i, client) in enumerate(poisoned):  # inside the segment of the label they were given
        target = int(client.y_train[client.poisoned[0]])
        ax.bar(i, len(client.poisoned), bottom=bottoms[target][i], fill=False, hatch="///", edgecolor="black",
               lw=0.6, width=0.8, label=None if j else "poisoned samples (relabelled to this class)")
    ax.set_xticks(x, [f"{r['client']}*" if r["forgotten"] else str(r["client"]) for r in rows],
                  fontsize=8 if len(rows) <= 40 else 5)
    sample = "" if len(shown) == len(data.clients) else (
        f"; {len(shown)} of {len(data.clients):,} clients shown: forgotten and poisoned ones first, then the lowest ids")
    ax.set_xlabel(f"client (* = forgotten){sample}")
    ax.set_ylabel("training samples (count, by the label trained on)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def shown_clients(data: FederatedData, forgotten: list[int]) -> list[int]:
    """The clients the figure draws: all, or :data:`MAX_BARS` of them (forgotten, poisoned, lowest ids), sorted."""
    if len(data.clients) <= MAX_BARS:
        return list(range(len(data.clients)))
    marked = [c for c in forgotten if c < len(data.clients)]
    marked += [c for c in data.backdoored if c not in marked]
    chosen = set(marked[:MAX_BARS])
    rest = (c for c in range(len(data.clients)) if c not in chosen)
    while len(chosen) < MAX_BARS:
        chosen.add(next(rest))
    return sorted(chosen)
