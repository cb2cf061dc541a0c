"""report.html: one self-contained page of a results folder, the tables sortable and the plots embedded.

Everything is inside the file (styles, a few lines of script, the PNGs as data URIs), so it can be
mailed or attached to a paper's supplement and opened anywhere, offline. A column header sorts
its table (numbers as numbers, censored values ``> R`` just above R); ``#sort=COLUMN`` in the
address opens the page sorted by that column of the first table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from fedunlearn.io import atomic_write_text
from fedunlearn.report.report import SummaryView, mean_cell
from fedunlearn.report.table import format_value

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th:first-child, td:first-child { text-align: left; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
img { max-width: 100%; display: block; margin: 1em 0 2em; border: 1px solid #eee; }
p.note { max-width: 60em; }
"""

SCRIPT = """
function key(text) {
  const t = text.trim(), m = t.match(/^[<>]=?\\s*(-?[0-9.eE+-]+)/);
  if (m) return parseFloat(m[1]) + (t[0] === '>' ? 1e-9 : -1e-9);
  const n = parseFloat(t);
  return isNaN(n) ? t : n;
}
function sortBy(table, col, descending) {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a.cells[col].textContent), y = key(b.cells[col].textContent);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
    return descending ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('th').forEach((th, i) => {
    th.classList.toggle('sorted-asc', i === col && !descending);
    th.classList.toggle('sorted-desc', i === col && descending);
  });
  table.dataset.sortedBy = table.tHead.rows[0].cells[col].textContent;
}
document.querySelectorAll('table.sortable').forEach(table => {
  table.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () =>
    sortBy(table, i, th.classList.contains('sorted-asc'))));
});
const wanted = new URLSearchParams(location.hash.slice(1)).get('sort');
if (wanted) {
  const table = document.querySelector('table.sortable');
  const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === wanted);
  if (col >= 0) sortBy(table, col, false);
}
window.addEventListener('load', () => {
  const shown = Array.from(document.images).filter(img => img.complete && img.naturalWidth > 0);
  document.body.dataset.imagesRendered = shown.length;
});
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_html(run_dir: str | Path, plots: list[Path]) -> Path:
    """``run_dir/report.html``: the mean ± std table, the per-seed table and every plot, in one file."""
    run_dir = Path(run_dir)
    view = SummaryView.of(run_dir)
    rows, by, columns, seeds = view.rows, view.by_strategy, view.columns, view.seeds
    mean_rows = [[name, *(mean_cell(mine, c) for c in columns)] for name, mine in by.items()]
    seed_rows = [[r["strategy"], r["seed"], *(format_value(r[c]) for c in columns)]
                 for r in sorted(rows, key=lambda r: (list(by).index(r["strategy"]), int(r["seed"])))]
    images = "".join(
        f'<h3>{html.escape(p.stem.replace("_", " "))}</h3><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Unlearning comparison: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Unlearning comparison: {html.escape(run_dir.name)}</h1>
<p class="note">Every metric is meant to be read against <code>retrain</code> (exact unlearning). A relearning
delay <code>&gt; R</code> is censored (the threshold was never reached in R probe rounds); ratios with a
censored side are bounds. Click a column header to sort.</p>
<h2>Mean ± standard deviation over {len(seeds)} seed(s) ({", ".join(seeds)})</h2>
<p class="note">The deviation is the sample one (n − 1). Where a seed's value is censored the mean is a
lower bound, shown <code>&gt; m</code> with the censored values at their caps, without a deviation; text
cells list each seed's value.</p>
{_table(["strategy", *columns], mean_rows)}
<h2>Every seed</h2>
{_table(["strategy", "seed", *columns], seed_rows)}
<h2>Plots</h2>
{images}
<script>{SCRIPT}</script>
</body></html>
"""
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path
