"""Influence functions: the primal CG solve against the dual kernel solve, side by side in one run.

Both compute the same removal estimate Δθ = (1/n) H⁻¹ b (docs/methods.md, "Influence functions"):
the primal by conjugate gradient with Gauss-Newton Hessian-vector products (``primal_delta``: no
p × p matrix, one jvp and one vjp per sample batch per iteration), the dual by building the
kernel 𝐊 = 𝐉𝐉ᵀ (nC × nC) and solving (nλI + Λ𝐊)α = v directly (``dual_solve``, one block of all
n samples unless ``--dual-block-mb`` bounds it). Two sweeps on scikit-learn's digits (64 inputs,
10 classes) with the model registry's MLP (64 -> 2h -> h -> 10, ReLU), each model first trained
full-batch (Adam, weight decay λ) on its n samples:

* **against p**: hidden width h over ``--hidden`` at ``--n`` samples;
* **against n**: n over ``--ns`` at hidden width ``--n-hidden``.

Every cell (one method, one size) runs in a fresh child process with one torch thread: it loads
the trained model, warms the method up on 4 samples, then times the solve (best of
``--repeats``, no further repeat once 10 s are spent). "solve MB" is the child's peak resident
memory during the solves (VmHWM, reset just before them through /proc/self/clear_refs) minus its
resident memory just before them: what the solve itself added; "process MB" is the child's peak
over its whole life (``ru_maxrss``: torch's import, loading and warm-up included). The primal's
Δθ and the dual's are compared (‖Δθ_primal − Δθ_dual‖ / ‖Δθ_dual‖), CG's iterations are
reported, and the crossing point (where the dual's time crosses the primal's) is printed for each
sweep. Two figures (time and memory against p, and against n) are written to ``--out``; copy them
to docs/img/ to update the documentation's.

    python benchmarks/influence.py [--hidden 4,16,64,128] [--n 200] [--ns 20,50,100,200,400,800]
                                   [--n-hidden 32] [--forget 10] [--damping 1e-2] [--tol 1e-8]
                                   [--repeats 3] [--dual-block-mb MB] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
METHODS = ("primal", "dual")
TRAIN_STEPS = 300
REPEAT_BUDGET_S = 10.0  # no further repeat once a cell's solves have taken this long


# ----------------------------------------------------------------------------- child: one cell


def _status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the kernel's peak resident memory (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(problem: Path, method: str, repeats: int, delta_out: Path) -> None:
    """Time one method on one saved problem; print one JSON line (seconds, memory, CG iterations)."""
    import numpy as np
    import torch

    from fedunlearn import influence as inf
    from fedunlearn.models import HiddenWidth, mlp

    torch.set_num_threads(1)
    saved = torch.load(problem)
    model = mlp((1, 8, 8), 10, HiddenWidth(saved["hidden"]))
    params, x, y, forget = saved["params"], saved["x"], saved["y"], saved["forget"].numpy()
    cfg = saved["settings"]
    block_bytes = None if cfg["dual_block_mb"] is None else int(cfg["dual_block_mb"] * MB)

    def solve(xs, ys, fs):
        if method == "primal":
            res = inf.primal_delta(model, params, xs, ys, fs, cfg["damping"], tol=cfg["tol"], max_iter=cfg["max_iter"])
            return res.solution, res.iterations, res.converged
        res = inf.dual_solve(model, params, xs, ys, fs, cfg["damping"], memory_bytes=block_bytes)
        return res.delta, None, True

    solve(x[:4], y[:4], np.array([0]))  # warm-up: torch.func's first calls, BLAS set-up
    gc.collect()
    before = _status_bytes("VmRSS")
    reset = _reset_peak()  # the peak now counts from here: imports, loading and warm-up no longer in it
    high_before = _status_bytes("VmHWM")
    times = []
    for _ in range(repeats):
        if sum(times) > REPEAT_BUDGET_S:
            break
        t0 = time.perf_counter()
        delta, iterations, converged = solve(x, y, forget)
        times.append(time.perf_counter() - t0)
        del_ = delta  # keep only the last solution alive between repeats
        del delta
        gc.collect()
    high_after = _status_bytes("VmHWM")
    np.save(delta_out, del_.numpy())
    print(json.dumps({"seconds": min(times), "repeats": len(times), "solve_bytes": max(0, high_after - before),
                      "bounded": not reset and high_after <= high_before,
                      "process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "iterations": iterations, "converged": converged}), flush=True)


# ----------------------------------------------------------------------------- parent


def make_problem(hidden: int, n: int, n_forget: int, damping: float, path: Path, settings: dict) -> int:
    """Train the MLP of width ``hidden`` on the first ``n`` digits; save θ̂ (float64), data, forget set."""
    import numpy as np
    import torch

    from fedunlearn import influence as inf
    from fedunlearn.data.sources import load_digits_dataset
    from fedunlearn.models import HiddenWidth, mlp

    ds = load_digits_dataset(None, 0)
    x = torch.as_tensor(ds.x_train[:n])
    y = torch.as_tensor(ds.y_train[:n])
    torch.manual_seed(0)
    model = mlp((1, 8, 8), 10, HiddenWidth(hidden))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=damping)
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    forget = np.random.default_rng(0).choice(n, size=n_forget, replace=False)
    params = inf.flat_params(model)
    torch.save({"hidden": hidden, "params": params, "x": x.double(), "y": y, "forget": torch.as_tensor(forget),
                "settings": settings}, path)
    return params.numel()


def run_cell(problem: Path, method: str, repeats: int, tmp: Path) -> dict:
    delta = tmp / f"{problem.stem}-{method}.npy"
    child = subprocess.run([sys.executable, __file__, "--worker", str(problem), method, str(repeats), str(delta)],
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if child.returncode != 0:
        raise SystemExit(f"{method} on {problem.name} failed ({child.returncode}):\n{child.stderr[-3000:]}")
    out = json.loads(child.stdout.strip().splitlines()[-1])
    out["delta"] = delta
    return out


def sweep(label: str, cells: list[tuple[int, int]], args, tmp: Path) -> list[dict]:
    """cells: (hidden, n) pairs; each gets a trained problem, then primal and dual in their own processes."""
    import numpy as np

    settings = {"damping": args.damping, "tol": args.tol, "max_iter": args.max_iter, "dual_block_mb": args.dual_block_mb}
    rows = []
    for hidden, n in cells:
        problem = tmp / f"{label}-h{hidden}-n{n}.pt"
        p = make_problem(hidden, n, args.forget, args.damping, problem, settings)
        row = {"hidden": hidden, "p": p, "n": n}
        for method in METHODS:
            row[method] = run_cell(problem, method, args.repeats, tmp)
            r = row[method]
            iters = f", {r['iterations']} CG iterations" if method == "primal" else ""
            print(f"[{label}] h={hidden} p={p:,} n={n} {method}: {r['seconds']:.3f} s, "
                  f"solve {r['solve_bytes'] / MB:.1f} MB{iters}", file=sys.stderr, flush=True)
        dp, dd = np.load(row["primal"]["delta"]), np.load(row["dual"]["delta"])
        row["agreement"] = float(np.linalg.norm(dp - dd) / np.linalg.norm(dd))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| hidden | p | n | nC | primal s | dual s | primal / dual time | primal solve MB | dual solve MB | "
             "primal process MB | dual process MB | CG iterations | ‖Δθ_primal − Δθ_dual‖ / ‖Δθ_dual‖ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pr, du = r["primal"], r["dual"]

        def mem(c: dict) -> str:
            return ("≤ " if c["bounded"] else "") + f"{c['solve_bytes'] / MB:.1f}"

        cg = f"{pr['iterations']}" + ("" if pr["converged"] else " (not converged)")
        lines.append(f"| {r['hidden']} | {r['p']:,} | {r['n']} | {r['n'] * 10:,} | {pr['seconds']:.3f} | "
                     f"{du['seconds']:.3f} | {pr['seconds'] / du['seconds']:.2f} | {mem(pr)} | {mem(du)} | "
                     f"{pr['process_bytes'] / MB:.0f} | {du['process_bytes'] / MB:.0f} | {cg} | {r['agreement']:.1e} |")
    return "\n".join(lines)


def crossing(rows: list[dict], key: str) -> str:
    """Where the dual's time crosses the primal's along ``key``, interpolated on log scales."""
    ratio = [(r[key], r["primal"]["seconds"] / r["dual"]["seconds"]) for r in rows]
    faster = [v for v, q in ratio if q > 1]
    if not faster:
        return f"the dual is never faster than the primal for {key} in {ratio[0][0]:,}..{ratio[-1][0]:,}"
    if len(faster) == len(ratio):
        return f"the dual is faster than the primal at every {key} tried ({ratio[0][0]:,}..{ratio[-1][0]:,})"
    parts = []
    for (a, qa), (b, qb) in zip(ratio, ratio[1:], strict=False):
        if (qa > 1) != (qb > 1):
            t = math.log(qa) / (math.log(qa) - math.log(qb))
            at = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
            side = "faster" if qb > 1 else "slower"
            parts.append(f"the dual becomes {side} than the primal between {key} = {a:,} and {b:,} "
                         f"(about {key} = {at:,.0f}, log-interpolated)")
    return "; ".join(parts)


def figure(rows: list[dict], key: str, xlabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[key] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {"primal": ("tab:blue", "o", "primal (CG, Gauss-Newton products)"),
              "dual": ("tab:orange", "s", "dual (kernel K = J Jᵀ, direct solve)")}
    for method, (color, marker, label) in styles.items():
        ax_t.plot(xs, [r[method]["seconds"] for r in rows], marker=marker, color=color, label=label)
        ax_m.plot(xs, [max(r[method]["solve_bytes"] / MB, 0.1) for r in rows], marker=marker, color=color, label=label)
    from matplotlib.ticker import NullFormatter

    for ax, ylabel in ((ax_t, "solve time (s)"), (ax_m, "memory added by the solve (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{v:,}" for v in xs])  # the sizes measured, not 10^k's minor labels
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_m.text(0.98, 0.03, "peak RSS minus RSS before; < 0.1 MB drawn at 0.1", transform=ax_m.transAxes,
              ha="right", va="bottom", fontsize=7, color="0.35")
    ax_t.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        print(f"{name}: expected comma-separated positive integers, got {text!r}", file=sys.stderr)
        raise SystemExit(2)
    return sorted(set(values))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="4,16,64,128", help="hidden widths of the p sweep")
    parser.add_argument("--n", type=int, default=200, help="training samples of the p sweep")
    parser.add_argument("--ns", default="20,50,100,200,400,800", help="training sample counts of the n sweep")
    parser.add_argument("--n-hidden", type=int, default=32, help="hidden width of the n sweep")
    parser.add_argument("--forget", type=int, default=10, help="forget-set size (samples)")
    parser.add_argument("--damping", type=float, default=1e-2, help="λ")
    parser.add_argument("--tol", type=float, default=1e-8, help="CG's relative residual tolerance")
    parser.add_argument("--max-iter", type=int, default=5000, help="CG's iteration cap")
    parser.add_argument("--repeats", type=int, default=3, help="timed solves per cell (the fastest is kept)")
    parser.add_argument("--dual-block-mb", type=float, help="bound on the dual's two Jacobian blocks (default: one block)")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 2 widths, 2 sample counts, 1 repeat")
    parser.add_argument("--out", type=Path, help="folder for the figures and the tables (influence.md)")
    args = parser.parse_args()
    hidden = parse_ints(args.hidden, "--hidden")
    ns = parse_ints(args.ns, "--ns")
    for name, value in (("--n", args.n), ("--n-hidden", args.n_hidden), ("--repeats", args.repeats),
                        ("--max-iter", args.max_iter), ("--forget", args.forget)):
        if value < 1:
            parser.exit(2, f"{name}: must be >= 1 (got {value})\n")
    if not args.damping > 0 or not args.tol > 0 or (args.dual_block_mb is not None and not args.dual_block_mb > 0):
        parser.exit(2, "--damping, --tol and --dual-block-mb must be > 0\n")
    if args.quick:
        hidden, ns, args.n, args.n_hidden, args.repeats = [4, 8], [30, 60], 40, 8, 1
        args.forget = min(args.forget, 5)
    if args.forget > min([args.n, *ns]):
        parser.exit(2, f"--forget: {args.forget} samples is more than the smallest n ({min([args.n, *ns])})\n")
    if max([args.n, *ns]) > 1347:
        parser.exit(2, "--n/--ns: digits has 1,347 training samples\n")

    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="fedunlearn-influence-"))
    t0 = time.perf_counter()
    by_p = sweep("p", [(h, args.n) for h in hidden], args, tmp)
    by_n = sweep("n", [(args.n_hidden, n) for n in ns], args, tmp)
    settings = (f"digits, registry MLP (64 -> 2h -> h -> 10), {args.forget} forget samples, λ = {args.damping:g}, "
                f"CG tol {args.tol:g} (cap {args.max_iter}), dual "
                + (f"blocks bounded by {args.dual_block_mb:g} MB" if args.dual_block_mb else "in one block")
                + f", best of {args.repeats}, one torch thread, a child process per cell")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = {"settings": settings, "p": by_p, "n": by_n}
        (args.out / "influence.json").write_text(json.dumps(rows, default=str, indent=1))
    text = (f"{settings}\n\n**Against p** (n = {args.n}):\n\n{table(by_p)}\n\n"
            f"Crossing against p: {crossing(by_p, 'p')}.\n\n**Against n** (hidden {args.n_hidden}, "
            f"p = {by_n[0]['p']:,}):\n\n{table(by_n)}\n\nCrossing against n: {crossing(by_n, 'n')}.\n\n"
            f"Whole run: {time.perf_counter() - t0:.0f} s.\n")
    print(text)
    if args.out:
        (args.out / "influence.md").write_text(text)
        figure(by_p, "p", "parameters p (log)", f"Removal estimate against model size (digits MLP, n = {args.n})",
               args.out / "influence_vs_p.png")
        figure(by_n, "n", "training samples n (log)",
               f"Removal estimate against training samples (digits MLP, p = {by_n[0]['p']:,})",
               args.out / "influence_vs_n.png")
        print(f"figures: {args.out / 'influence_vs_p.png'}, {args.out / 'influence_vs_n.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
