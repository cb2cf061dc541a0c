"""The Flower ServerApp for ``flwr run .`` (``[tool.flwr.app.components]`` in pyproject.toml).

It reads the experiment named by the run config key ``experiment`` (a TOML path, relative to the
working directory or to this project) and writes to ``out``: the comparison when the experiment
has ``[[forget]]`` requests, otherwise the training run. It runs the same checks and phases as
the ``fedunlearn`` commands, which reach them through :func:`fedunlearn.flower.runtime.run_federation`.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import ConfigError
from fedunlearn.data import federated_data
from fedunlearn.flower.runtime import Federation, quiet_environment
from fedunlearn.parts import for_seed, load_experiment
from fedunlearn.phases.compare import compare
from fedunlearn.phases.train import train_phase
from fedunlearn.report import draw_all, write_report
from fedunlearn.tasks import task_of

app = ServerApp()
PROJECT = Path(__file__).resolve().parents[2]


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT / p


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_environment()
    cfg = load_experiment(_resolve(str(context.run_config["experiment"])))
    if cfg.sweep:
        raise ConfigError("sweep: a ServerApp runs one experiment; run the sweep with fedunlearn run, or remove "
                          "[sweep]")
    out = Path(str(context.run_config["out"])).expanduser()
    fed = Federation(grid, cfg.data.num_clients, timeout=cfg.simulation.round_timeout_s,
                     max_failed_rounds=cfg.simulation.max_failed_rounds,
                     failure_log=out / "failures.log")
    if cfg.forget:
        compare(fed, cfg, out)
        write_report(out, draw_all(out))
    else:
        cfg = for_seed(cfg)
        scorer = task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed), cfg.forget_requests())
        train_phase(fed, cfg, out, scorer)
