"""What each finished piece of a results folder was computed with, so ``--resume`` never mixes settings.

A *piece* is a folder one step of the pipeline writes: a training run, one strategy's timeline,
one model's relearning probe. Before a piece is computed, ``settings.json`` records the settings
it depends on (and only those) with their fingerprint, a hash of their canonical JSON. On resume,
:meth:`Piece.claim` keeps a piece whose fingerprint matches and clears one computed with other
settings, saying which settings changed, so every result left in a folder is described by the
folder's resolved config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedunlearn.config import ExperimentConfig, ForgetRequest, config_to_dict
from fedunlearn.io import atomic_write_text
from fedunlearn.settings import ConfigError, as_dict
from fedunlearn.tasks import probe_metric

if TYPE_CHECKING:
    from fedunlearn.strategies import StrategySpec

SETTINGS_FILE = "settings.json"


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of ``settings`` in canonical JSON (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}`` (lists are values)."""
    if not isinstance(settings, dict):
        return {prefix.rstrip("."): settings}
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def changes(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """The settings that differ, as ``key old -> new`` (at most ``limit``, then a count)."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)"))
    text = ", ".join(f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclasses.dataclass
class Piece:
    """One folder of results and the settings it depends on.

    Parameters
    ----------
    path
        The piece's folder.
    settings
        Everything its results depend on, as a JSON-shaped dict (nested pieces' fingerprints
        included, so a change upstream reaches every piece downstream).
    """

    path: Path
    settings: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def recorded(self) -> dict[str, Any] | None:
        """The settings the folder's results were computed with, or None when it has no record."""
        try:
            return json.loads((self.path / SETTINGS_FILE).read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def matches(self) -> bool:
        """Whether the folder's results were computed with exactly these settings."""
        recorded = self.recorded()
        return recorded is not None and fingerprint(recorded) == self.fingerprint

    def holds(self, name: str) -> bool:
        """Whether the folder holds a finished ``name`` computed with exactly these settings."""
        return self.matches() and (self.path / name).exists()

    def clear_if_stale(self, name: str, log=print) -> None:
        """Remove the folder when it holds results computed with other settings.

        A folder with files but no record was not written as this piece (another command's
        results, an older version's, or a user's files): it is never removed; ConfigError says so.
        """
        if self.matches() or not self.path.exists() or not any(self.path.iterdir()):
            return
        check_owned(self.path)
        recorded = self.recorded() or {}
        log(f"{name}: computed with other settings ({changes(recorded, self.settings)}); recomputing it")
        shutil.rmtree(self.path)

    def claim(self, name: str, log=print) -> bool:
        """Keep the folder if it matches (True); else clear it, say why, and record these settings (False)."""
        if self.matches():
            return True
        self.clear_if_stale(name, log)
        atomic_write_text(self.path / SETTINGS_FILE,
                          json.dumps({"fingerprint": self.fingerprint, "settings": self.settings}, indent=1,
                                     sort_keys=True, default=str))
        return False


def _used(section: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """A config section without the settings tables of parts it does not use."""
    return {k: v for k, v in section.items() if not isinstance(v, dict) or k in parts or k == "backdoor"}


def check_owned(path: Path) -> None:
    """ConfigError unless ``path`` is missing, empty, or a piece's folder (it has a settings record)."""
    if path.is_dir() and any(path.iterdir()) and not (path / SETTINGS_FILE).is_file():
        raise ConfigError(f"--out: {path} holds files with no record of the settings they were computed with "
                          f"({SETTINGS_FILE}), so they are not this command's results; move them away or choose "
                          "another --out")


def training_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a training run's checkpoints, store and rounds.csv depend on.

    The forget requests are in, as written (``round = 0`` stays "the last round"): their rounds
    decide which snapshots are kept and their clients which forget accuracy rounds.csv reports.
    ``train.rounds`` is out, so training can be extended by resuming with more rounds (round t
    never depends on how many follow); what depends on the final model adds it back.
    ``simulation`` is out too: it changes where and how fast, not what; except the clients' device
    (a GPU's arithmetic is not the CPU's), which is in when it is not the CPU (so the records of
    CPU runs stay as they were); ``data.validation``, ``data.binarize`` and the task likewise only
    when they are not the defaults, and ``model.dilution`` only when the model is diluted
    (:func:`dilution_record`).
    """
    raw = config_to_dict(cfg)
    train = {k: v for k, v in raw["train"].items() if k != "rounds"}
    device = cfg.simulation.client_device
    data = _used(raw["data"], [cfg.data.name, cfg.data.partition])
    if not cfg.data.validation:  # no split: the records of runs from before the setting stay as they were
        data.pop("validation", None)
    if not cfg.data.binarize:
        data.pop("binarize", None)
    task = {"task": task_record(raw["task"], cfg.task.name)} if cfg.task.name != "classification" else {}
    model = _used(raw["model"], [cfg.model.name])
    if cfg.model.dilution.active:  # a dense model's record stays as it was before the setting
        model["dilution"] = dilution_record(cfg)
    return {"seed": cfg.seed, **task, "data": data,
            "model": model, "train": train,
            "store": {"history": cfg.store.history, "dtype": cfg.store.dtype},
            "forget": [request_record(r) for r in cfg.forget], **({"device": device} if device != "cpu" else {})}


SCORING_ONLY = {"generative": ("samples", "burn_in")}  # settings read by summary metrics alone, recomputed on every run


def task_record(section: dict[str, Any], name: str) -> dict[str, Any]:
    """The task's section as a training record holds it: its own table without the settings only the
    summary metrics read (every comparison recomputes those)."""
    out = _used(section, [name])
    if name in out:
        out[name] = {k: v for k, v in out[name].items() if k not in SCORING_ONLY.get(name, ())}
    return out


def dilution_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a diluted run depends on: sparsity and mode and, late, the round after which it prunes
    (``train.rounds − finetune_rounds``: the rounds up to it, and after it, do not depend on
    ``train.rounds`` otherwise, so a late run can be extended with the same pruning round)."""
    d = cfg.model.dilution
    late = {"prune_round": cfg.train.rounds - d.finetune_rounds} if d.mode == "late" else {}
    return {"sparsity": d.sparsity, "mode": d.mode, **late}


def request_record(request: ForgetRequest) -> dict[str, Any]:
    """A request as its settings record holds it: the keys of its kind (a client request as it always was)."""
    return {k: v for k, v in dataclasses.asdict(request).items() if v not in ("", [])}


def strategy_settings(cfg: ExperimentConfig, spec: StrategySpec, training: str, reference: str) -> dict[str, Any]:
    """What one strategy's timeline depends on: the training run and its length, the parts' settings, recovery.

    ``training`` and ``reference`` are the fingerprints of the training run and of the reference
    strategy (recovery "until-retrain" aims at the reference's test accuracy).
    """
    f = cfg.forgetting
    out: dict[str, Any] = {"training": training, "rounds": cfg.train.rounds, "strategy": spec.label,
                           "parts": {p.name: as_dict(s) for p, s in zip(spec.parts, spec.settings, strict=True)}}
    if not spec.from_scratch and spec.build().recovers:
        out["recovery"] = {"mode": f.recovery, "rounds": f.recovery_rounds, "tolerance": f.recovery_tolerance}
        if f.recovery == "until-retrain":
            out["reference"] = reference
    return out


PROBE_KEYS = {"all": ("max_rounds",), "alone": ("alone_lr", "alone_max_steps")}  # beside metric and alpha


def original_model(training: str, cfg: ExperimentConfig) -> str:
    """The fingerprint of the original model: the training run at ``train.rounds``."""
    return fingerprint({"training": training, "rounds": cfg.train.rounds})


def probe_settings(cfg: ExperimentConfig, mode: str, model: str, original: str,
                   reference: str | None = None) -> dict[str, Any]:
    """What one model's probe in ``mode`` depends on: the model, the original (its threshold), the
    probe settings that mode reads, and the training recipe (inside the original's fingerprint).

    ``reference`` is the reference model's fingerprint when the probe's metric is normalised by it
    (the generative task's forget likelihood): the original's own fingerprint does not hold it.
    """
    probe = {"metric": probe_metric(cfg), "alpha": cfg.probe.alpha,
             **{k: getattr(cfg.probe, k) for k in PROBE_KEYS[mode]}}
    if mode == "alone":  # a probe simulated on the server (before the alone mode ran as Flower rounds) is not reused
        probe["runs"] = "one Flower round per SGD step"
    out = {"mode": mode, "model": model, "original": original, "probe": probe}
    return out if reference is None else {**out, "reference": reference}
