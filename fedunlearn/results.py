"""A run folder: resolved config, per-round table, checkpoint and store, all written atomically.

Layout::

    DIR/config.toml          the resolved experiment config
    DIR/rounds.csv           round, the task's round metrics (classification: test_acc, test_loss,
                             forget_acc, backdoor_asr; forget_acc on the clients the experiment will
                             forget), train_loss, clients, failures, wall_s
    DIR/settings.json        what the results depend on, and its fingerprint (fedunlearn.provenance)
    DIR/label_distribution.png  each client's samples per class (the federation before training)
    DIR/failures.log         the tracebacks of failed client replies (only when there were any)
    DIR/checkpoint/global.npz  the global weights after the last checkpointed round (key ``round``)
    DIR/checkpoint/dilution_mask.npz  a diluted model's mask (fedunlearn.dilution)
    DIR/store/               the PseudoGradientStore (latest.npz, store.json, history/)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from fedunlearn.config import ExperimentConfig, config_to_dict, to_toml
from fedunlearn.io import atomic_savez, atomic_write_text
from fedunlearn.settings import ConfigError

RUN_COLUMNS = ["train_loss", "clients", "failures", "wall_s"]  # after the round and the task's round metrics


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text with the given column order (missing values empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    """A CSV file as a list of dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class RunDir:
    """Paths and atomic writers of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.rounds = self.path / "rounds.csv"
        self.failures = self.path / "failures.log"
        self.label_distribution = self.path / "label_distribution.png"
        self.checkpoint = self.path / "checkpoint" / "global.npz"
        self.store = self.path / "store"

    @classmethod
    def trained(cls, path: str | Path) -> RunDir:
        """The run folder ``fedunlearn train`` wrote at ``path``, or ConfigError saying what to do."""
        run = cls(path)
        if not run.config.exists() or not run.checkpoint.exists():
            raise ConfigError(f"RUN_DIR: {path} holds no trained run (config.toml and checkpoint/); "
                              "run `fedunlearn train` first")
        return run

    def write_config(self, cfg: ExperimentConfig) -> None:
        atomic_write_text(self.config, to_toml(config_to_dict(cfg)))

    def write_rounds(self, rows: list[dict], metrics: list[str]) -> None:
        """rounds.csv: the round, the task's round ``metrics`` and the run's own columns."""
        atomic_write_text(self.rounds, csv_text(rows, ["round", *metrics, *RUN_COLUMNS]))

    def snapshot(self, server_round: int) -> Path:
        """Where the model at a forget request's round is kept."""
        return self.path / "checkpoint" / f"round{server_round}.npz"

    def save_checkpoint(self, weights: list[np.ndarray], server_round: int, path: Path | None = None) -> None:
        atomic_savez(path or self.checkpoint, round=np.int64(server_round), **{f"a{i}": w for i, w in enumerate(weights)})

    def load_checkpoint(self, path: Path | None = None) -> tuple[list[np.ndarray], int]:
        """(weights, round) of the last checkpoint (or of ``path``); FileNotFoundError when there is none."""
        with np.load(path or self.checkpoint) as f:
            weights = [f[f"a{i}"] for i in range(len(f.files) - 1)]
            return weights, int(f["round"])
