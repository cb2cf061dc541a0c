"""How a federation's size K changes what fedunlearn costs, side by side in one run.

For each K, ``fedunlearn train`` runs as a child process on seeded synthetic data (25 train samples
per client, a fixed 2,000-sample test set, 20 features, 4 classes, the MLP), 10 clients sampled
per round, and is timed from its own output: start-up (process start to the first round's
start), seconds per round (median of rounds 2..R, from rounds.csv), the first round, shutdown
(last round's line to process exit), the whole command, and the peak resident memory of the
process and all its descendants (Ray's processes and the client actors included). Then a forget
request at K = 10,000 (``fedunlearn run``: 100 clients forgotten, retrain and PUF, 3 recovery
rounds, a 3-round relearning probe) is timed stage by stage. Last, what one client actor holds,
measured step by step in a fresh process doing what an actor does.

    python benchmarks/scale.py [--ks 100,1000,10000,100000] [--rounds 5] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import PeakMemory

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_PER_CLIENT = 25
SAMPLED_PER_ROUND = 10
MB = 2**20


def experiment(k: int, rounds: int, forget: int = 0) -> str:
    """The experiment TOML of a federation of ``k`` clients (and a request forgetting the first ``forget``)."""
    text = f"""seed = 0
[data]
name = "synthetic"
num_clients = {k}
partition = "iid"
[data.synthetic]
samples = {SAMPLES_PER_CLIENT * k}
test_samples = 2000
features = 20
classes = 4
[model]
name = "mlp"
[train]
rounds = {rounds}
local_epochs = 1
batch_size = 16
fraction_train = {SAMPLED_PER_ROUND / k!r}
[simulation]
num_cpus = 1
"""
    if forget:
        # A cost measurement: the retrained model is as good on i.i.d. clients' data as the original, so the
        # checks that the forget set is learnt and separable are off (they guard science runs, not timings).
        text += f"""
[[forget]]
clients = {list(range(forget))}
[forgetting]
strategies = ["retrain", "puf"]
recovery = "fixed"
recovery_rounds = 3
check_separation = false
min_original_forget_acc = 0.0
[probe]
metric = "forget_acc"
max_rounds = 3
"""
    return text


def run_timed(args: list[str]) -> tuple[float, list[tuple[float, str]], PeakMemory]:
    """Run a fedunlearn command; its wall time, each output line with the seconds since start, its memory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "fedunlearn.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    with PeakMemory(child.pid) as mem:
        for line in child.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            mem.sample()
        code = child.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}):\n" + "\n".join(text for _, text in lines[-20:]))
    return wall, lines, mem


def train_row(k: int, rounds: int, tmp: Path) -> dict:
    path = tmp / f"k{k}.toml"
    path.write_text(experiment(k, rounds))
    out = tmp / f"train-k{k}"
    wall, lines, mem = run_timed(["train", str(path), "--out", str(out)])
    with open(out / "rounds.csv") as fh:
        elapsed = [float(r["wall_s"]) for r in csv.DictReader(fh)]
    round_lines = [t for t, text in lines if text.startswith("round ")]
    first_round_start = round_lines[0] - elapsed[0]
    per_round = [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]
    return {"K": k, "start-up s": first_round_start, "round 1 s": elapsed[0],
            "s/round": statistics.median(per_round), "shutdown s": wall - round_lines[-1], "command s": wall,
            "peak MB": mem.peak / MB, "driver MB": mem.at_peak.get("driver", 0) / MB,
            "actor MB (largest)": mem.actor_peak / MB, "Ray MB": mem.at_peak.get("ray", 0) / MB}


def forget_row(k: int, rounds: int, forget: int, tmp: Path) -> dict:
    """``fedunlearn run`` with a client request: seconds per stage, read from the lines that start each."""
    path = tmp / f"forget-k{k}.toml"
    path.write_text(experiment(k, rounds, forget))
    wall, lines, mem = run_timed(["run", str(path), "--out", str(tmp / f"run-k{k}")])
    marks = {"start-up and training": 0.0}
    for t, text in lines:
        for stage, prefix in (("retrain", "[seed 0] retrain"), ("puf", "[seed 0] puf"),
                              ("probe", "[seed 0] relearning-delay probe"), ("scoring, report, shutdown", "| strategy")):
            if text.startswith(prefix) and stage not in marks:
                marks[stage] = t
    marks["end"] = wall
    names = list(marks)
    stages = {name: marks[nxt] - marks[name] for name, nxt in zip(names, names[1:], strict=False)}
    return {"K": k, "forgotten": forget, **{f"{s} s": v for s, v in stages.items()}, "command s": wall,
            "peak MB": mem.peak / MB}


ACTOR_STEPS = r"""
import json, os, sys
def mb():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return [int(fields[k].split()[0]) / 1024 for k in ("Rss", "Anonymous")]
steps = [("python and numpy", mb())]
import numpy
import torch
steps.append(("+ import torch", mb()))
import flwr.clientapp, ray
steps.append(("+ import flwr and ray", mb()))
from fedunlearn.flower.client_app import app
steps.append(("+ import fedunlearn's ClientApp", mb()))
from fedunlearn.config import DataConfig
from fedunlearn.data import federated_data
from fedunlearn.settings import build
cfg = build(DataConfig, json.loads(sys.argv[1]), "data.")
data = federated_data(cfg, 0)
steps.append((f"+ data set built ({cfg.num_clients:,} clients, partitions cut lazily)", mb()))
for c in range(10):
    data.clients[c].x_train
steps.append(("+ the 10 clients of a round cut", mb()))
every = [data.clients._cut(c) for c in range(len(data.clients))]
steps.append(("+ every client cut (what each actor held before)", mb()))
print(json.dumps(steps))
"""


def actor_steps(k: int) -> list[tuple[str, float, float]]:
    data = {"name": "synthetic", "num_clients": k, "partition": "iid",
            "synthetic": {"samples": SAMPLES_PER_CLIENT * k, "test_samples": 2000, "features": 20, "classes": 4}}
    out = subprocess.run([sys.executable, "-c", ACTOR_STEPS, json.dumps(data)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return [(name, rss, anon) for name, (rss, anon) in json.loads(out.stdout.strip().splitlines()[-1])]


def table(rows: list[dict], digits: int = 2) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else f"{v:.{digits}f}" if isinstance(v, float)
                                       else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="100,1000,10000,100000", help="federation sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forget-k", type=int, default=10000, help="federation size of the forget request (0: skip)")
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fedunlearn-scale-"))
    rows = []
    for k in ks:
        print(f"training K = {k:,} ({args.rounds} rounds, {SAMPLED_PER_ROUND} clients per round) ...", flush=True)
        rows.append(train_row(k, args.rounds, tmp))
        print(f"  {rows[-1]['command s']:.1f} s, {rows[-1]['s/round']:.3f} s/round, peak {rows[-1]['peak MB']:.0f} MB",
              flush=True)
    base = rows[0]
    for r in rows:
        r[f"s/round / K={base['K']:,}"] = r["s/round"] / base["s/round"]
        r[f"command / K={base['K']:,}"] = r["command s"] / base["command s"]
    parts = [f"Training, {args.rounds} rounds, {SAMPLED_PER_ROUND} clients sampled per round:\n\n{table(rows)}"]
    if args.forget_k:
        forget = max(1, args.forget_k // 100)
        print(f"forget request at K = {args.forget_k:,} ({forget} clients; retrain, puf, probe) ...", flush=True)
        parts.append(f"Forget request at K = {args.forget_k:,} (`fedunlearn run`: {forget} clients forgotten, "
                     f"{2 * args.rounds} training rounds, retrain and PUF with 3 recovery rounds, 3-round probe), "
                     f"seconds per stage:\n\n{table([forget_row(args.forget_k, 2 * args.rounds, forget, tmp)], 1)}")
    print(f"what one client actor holds (K = {ks[-1]:,}) ...", flush=True)
    steps = [{"step": name, "resident MB": rss, "anonymous MB": anon} for name, rss, anon in actor_steps(ks[-1])]
    parts.append(f"What one client actor holds, step by step in a fresh process (K = {ks[-1]:,}):\n\n{table(steps, 0)}")
    text = "\n\n".join(parts) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
