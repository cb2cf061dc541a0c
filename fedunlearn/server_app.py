"""The Flower ServerApp for ``flwr run .`` (``[tool.flwr.app.components]`` in pyproject.toml).

It reads the experiment named by the run config key ``experiment`` (a TOML path, relative to the
working directory or to this project) and writes to ``out``: the comparison when the experiment
has ``[[forget]]`` requests, otherwise the training run. ``fedunlearn`` commands reach the same
phases through :func:`fedunlearn.federation.run_federation`.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import load_config
from fedunlearn.federation import Federation, quiet_environment
from fedunlearn.phases.compare import compare
from fedunlearn.phases.train import train_phase
from fedunlearn.report import draw_all, write_report

app = ServerApp()
PROJECT = Path(__file__).resolve().parents[1]


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT / p


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_environment()
    cfg = load_config(_resolve(str(context.run_config["experiment"])))
    out = Path(str(context.run_config["out"])).expanduser()
    fed = Federation(grid, cfg.data.num_clients)
    if cfg.forget:
        compare(fed, cfg, out)
        write_report(out, draw_all(out))
    else:
        train_phase(fed, cfg, out)
