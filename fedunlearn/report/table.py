"""The summary as a Markdown table, one row per strategy, every seed's value in each cell.

What ``fedunlearn run`` and ``fedunlearn forget`` print at the end and what
``fedunlearn report DIR --markdown`` prints from a results folder: the README's result tables are
this output, pasted. Cells list the seeds' values in seed order (``0.964 / 0.967 / 0.958``).
Wall-clock seconds are left out by default: they differ between runs of the same seed.
"""

from __future__ import annotations

import math

DEFAULT_COLUMNS = ["test_acc", "forget_acc", "forget_test_acc", "kept_acc", "backdoor_asr", "mia_efficacy", "mia_nn",
                   "test_ll", "forget_ll", "gap_forget_ll", "forget_gap", "gen_forget_share",
                   "avg_gap", "recovery_rounds", "relearn_delay", "relearn_ratio_to_retrain", "client_epochs"]


def format_value(value) -> str:
    """A number short enough for a table: whole numbers plain, others to 3 significant decimals."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return ""
    if number.is_integer():
        return str(int(number))
    return f"{number:.1f}" if abs(number) >= 10 else f"{number:.3f}"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """The rows (dicts, as summary.csv holds them) as a Markdown table grouped by strategy."""
    wanted = columns or DEFAULT_COLUMNS
    shown = [c for c in wanted if any(format_value(r.get(c, "")) for r in rows)] if columns is None else wanted
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    lines = ["| strategy | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for name in strategies:
        mine = sorted((r for r in rows if r["strategy"] == name), key=lambda r: int(r.get("seed", 0)))
        cells = [" / ".join(format_value(r.get(c, "")) for r in mine) for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
