"""Flower simulation against a plain sequential PyTorch loop doing the same training.

For each setting, the same clients, data, recipe, seeds and sorted aggregation run twice in one
process: once as a plain loop (clients trained one after the other, no Flower, no Ray) and once
as a Flower simulation on the Ray backend. Reported: seconds per round (median after the first),
their ratio, Ray start-up, simulation start-up and shutdown, peak resident memory of this process
and all its descendants (Ray's processes included), and the largest difference between the two
final models (0 means the simulation reproduced the plain loop exactly).

With ``--device cuda`` the clients train on the GPU on both sides: the plain loop moves its client
model there, and the simulation gives each actor a share of the GPU (``simulation.num_gpus`` 0.5
for two actors, 1 for one); the server evaluates on the CPU on both sides. The setting
``cifar-resnet`` is the CIFAR-10-shaped case: resnet_gn on 32x32x3 images written by the
benchmark in CIFAR-10's own pickle format (random pixels: a timing, not a result).

    python benchmarks/sim_overhead.py [--rounds 15] [--settings default,light,mnist28] [--device cpu]
                                      [--out docs/benchmarks-latest.md]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import PeakMemory

from fedunlearn.arrays import weighted_step
from fedunlearn.data import federated_data
from fedunlearn.evaluation import Scorer
from fedunlearn.flower import compat
from fedunlearn.flower.runtime import backend_config, quiet_environment, run_federation
from fedunlearn.models import build_model
from fedunlearn.parts import load_experiment
from fedunlearn.phases.train import train_phase
from fedunlearn.training import get_weights, set_weights, train_local

ROOT = Path(__file__).resolve().parents[1]
def plain_loop(cfg, threads: int, device: str = "cpu") -> tuple[list[float], list[np.ndarray]]:
    """FedAvg as a plain sequential loop: same seeds, same sorted aggregation, same evaluation.

    With one torch thread it computes exactly what the simulation's actors compute (each actor is
    given one CPU, so one thread); more threads change the order of float sums inside kernels.
    """
    import torch

    from fedunlearn.flower.client_app import client_seed

    torch.set_num_threads(threads)
    data = federated_data(cfg.data, cfg.seed)
    scorer = Scorer(cfg, data, [])  # what the simulation's server evaluates with, every round
    weights = scorer.initial_weights()
    client = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed).to(device)
    times, t = [], cfg.train
    for rnd in range(1, t.rounds + 1):
        t0 = time.perf_counter()
        contributions = []
        for pid, cd in enumerate(data.clients):
            set_weights(client, weights)
            train_local(client, cd.x_train, cd.y_train, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                        momentum=t.momentum, seed=client_seed(cfg.seed, rnd, pid))
            contributions.append((cd.num_examples, [w - g for w, g in zip(get_weights(client), weights, strict=True)]))
        weights = weighted_step(weights, contributions, t.server_lr)
        scorer.round_metrics(weights)
        times.append(time.perf_counter() - t0)
    return times, weights


def simulation(cfg, out: Path) -> dict:
    """The same training as a Flower simulation; Ray is started here so its start-up is timed apart."""
    import ray

    quiet_environment()
    t0 = time.perf_counter()
    ray.init(**backend_config(cfg.simulation)["init_args"])
    ray_s = time.perf_counter() - t0
    marks = {}

    def job(fed):
        marks["ready"] = time.perf_counter()
        scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), [])
        result = train_phase(fed, cfg, out, scorer, log=lambda *_: None)
        marks["done"] = time.perf_counter()
        return result

    t1 = time.perf_counter()
    result = run_federation(cfg.data.num_clients, cfg.simulation, job)
    end = time.perf_counter()
    walls = [float(r["wall_s"]) for r in result.rows]
    rounds = [walls[0]] + [b - a for a, b in zip(walls, walls[1:], strict=False)]
    return {"ray_s": ray_s, "startup_s": marks["ready"] - t1, "shutdown_s": end - marks["done"],
            "rounds": rounds, "weights": result.weights}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def digits_as_mnist(root: Path) -> None:
    """Write scikit-learn's digits upscaled to 28x28 as MNIST IDX files (loaded by the mnist loader)."""
    from fedunlearn.data.sources import load_digits_dataset

    ds = load_digits_dataset(None, 0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", ds.x_train, ds.y_train), ("t10k", ds.x_test, ds.y_test)):
        big = np.kron(x[:, 0], np.ones((3, 3)))  # 24x24
        big = np.pad(big, ((0, 0), (2, 2), (2, 2))) * 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", big)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)


def cifar_shaped(root: Path, per_batch: int = 100) -> None:
    """Write CIFAR-10's python pickle batches (5 train batches and a test batch) of seeded random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(c) for c in rng.integers(0, 10, per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--settings", default="default,light,mnist28",
                        help="comma-separated: default, light, mnist28, cifar-resnet")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where clients train")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device: torch sees no GPU on this machine; run with --device cpu", file=sys.stderr)
            raise SystemExit(2)
    tmp = Path(tempfile.mkdtemp(prefix="fedunlearn-bench-"))
    digits_as_mnist(tmp / "mnist")
    cifar_shaped(tmp / "cifar")
    # The same work on both sides: no history on disk, no forget-set metrics per round.
    same = ["store.history=false", "forget=[]", "forgetting.strategies=['retrain']", "data.backdoor.clients=[]", "probe.metric=auto",
            f"train.rounds={args.rounds}"]
    known = {
        "default": ("default (digits 8x8, cnn)", []),
        "light": ("light: digits cnn, 1 epoch, batch 64", ["train.local_epochs=1", "train.batch_size=64"]),
        "mnist28": ("cnn on 28x28 (digits upscaled, mnist loader)",
                    ["data.name=mnist", f"data.mnist.root='{tmp / 'mnist'}'"]),
        "cifar-resnet": ("resnet_gn on CIFAR-10-shaped 32x32x3 (500 random images, cifar10 loader)",
                         ["data.name=cifar10", f"data.cifar10.root='{tmp / 'cifar'}'", "model.name=resnet_gn",
                          "data.partition=iid", "train.local_epochs=1", "train.batch_size=32", "train.lr=0.01"]),
    }
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown:
        print(f"--settings: {unknown[0]!r} is not one of {', '.join(known)}", file=sys.stderr)
        raise SystemExit(2)
    overrides = {known[s][0]: [*same, *known[s][1]] for s in chosen}
    settings = {name: load_experiment(ROOT / "experiments/default.toml", o) for name, o in overrides.items()}
    lines = ["| setting | variant | s/round (median after round 1) | ratio to best plain loop | "
             "Ray start-up s | sim start-up s | shutdown s | peak MB (all processes) | max abs weight diff to plain, 1 thread |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (name, cfg) in enumerate(settings.items()):
        rows = []
        for threads in (1, 2):
            print(f"[{name}] plain loop, {threads} thread(s) ...", file=sys.stderr, flush=True)
            with PeakMemory() as mem:
                times, weights = plain_loop(cfg, threads, args.device)
            rows.append((f"plain loop on {args.device}, {threads} torch thread(s)", statistics.median(times[1:]), None,
                         mem.peak, weights))
        reference = rows[0][4]
        fast = compat.POLL_INTERVAL_S
        half, whole = (["simulation.num_gpus=0.5"], ["simulation.num_gpus=1"]) if args.device == "cuda" else ([], [])
        share = " + 0.5 GPU" if args.device == "cuda" else ""
        variants = {
            f"simulation, 2 actors x 1 CPU{share} (fedunlearn's 5 ms polling)": (half, fast),
            f"simulation, 1 actor x 2 CPUs{' + 1 GPU' if share else ''}": (["simulation.num_cpus=2", *whole], fast),
            f"simulation, 2 actors x 1 CPU{share}, Flower's 0.1 s polling interval": (half, 0.1),
        }
        for j, (variant, (extra, poll)) in enumerate(variants.items()):
            print(f"[{name}] {variant} ...", file=sys.stderr, flush=True)
            vcfg = load_experiment(ROOT / "experiments/default.toml", [*overrides[name], *extra])
            compat.POLL_INTERVAL_S = poll
            with PeakMemory() as mem:
                sim = simulation(vcfg, tmp / f"run{i}-{j}")
            compat.POLL_INTERVAL_S = fast
            rows.append((variant, statistics.median(sim["rounds"][1:]), sim, mem.peak, sim["weights"]))
        best = min(r[1] for r in rows[:2])
        for variant, per_round, sim, peak, weights in rows:
            diff = max(float(np.abs(a - b).max()) for a, b in zip(reference, weights, strict=True))
            timing = (f"{sim['ray_s']:.1f} | {sim['startup_s']:.1f} | {sim['shutdown_s']:.1f}" if sim else "- | - | -")
            lines.append(f"| {name} | {variant} | {per_round:.3f} | {per_round / best:.2f} | {timing} | "
                         f"{peak / 2**20:.0f} | {diff:.1e} |")
            print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
