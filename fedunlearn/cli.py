"""Command line: parses arguments and calls phases; every rule lives in the phases and parts.

    fedunlearn data EXPERIMENT.toml [--seed S] [--set key=value ...] [--out DIR]
    fedunlearn train EXPERIMENT.toml [--set key=value ...] [--out DIR] [--resume]
    fedunlearn forget RUN_DIR (--client 3 | --samples 3:poisoned | --class 7) --strategy puf-ieu
                      [--recovery-rounds R] [--set ...] [--out DIR]
    fedunlearn run EXPERIMENT.toml [--seeds N] [--set key=value ...] [--out DIR] [--resume]
                   (an experiment with a [sweep] table runs once per point, fedunlearn.phases.sweep)
    fedunlearn probe RUN_DIR (--client 3 | --samples 3:poisoned | --class 7) [--metric backdoor] [--mode all|alone] [--max-rounds R] [--model DIR]
                     [--reference DIR] (the retrained model, for the generative task's normalised forget_ll)
    fedunlearn plot DIR
    fedunlearn report DIR [--markdown] [--html] [--columns a,b,c]

Bad input (config, client ids, data root, run folder, a step size that makes weights NaN) prints
one line naming the field and the fix and exits with code 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from fedunlearn.config import request_from_flags
from fedunlearn.settings import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT (128 + 2)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fedunlearn: error: {message}", file=sys.stderr)
    return code


def _out_dir(args: argparse.Namespace, default: Path, marker: str | None) -> Path:
    """The results folder, created now (after every other check) so an impossible one fails first.

    Folders created here are listed in ``args.created``; :func:`main` removes them again when the
    command fails before writing into them.
    """
    out = Path(args.out) if args.out else default
    if marker and (out / marker).exists() and not getattr(args, "resume", False):
        fix = "pass --resume to continue or choose another --out" if hasattr(args, "resume") else \
            "choose another --out (or remove it)"
        raise ConfigError(f"--out: {out} already holds results; {fix}")
    args.created = [p for p in [out, *out.parents] if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out: cannot create {out} ({err.strerror or err}); choose a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: {out} is not writable; choose a folder you can write to")
    return out


def check_resources(sim) -> None:
    """Client resources against the machine or cluster, before any folder is made (imported lazily)."""
    from fedunlearn.flower.runtime import check_resources as check

    check(sim)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def cmd_data(args: argparse.Namespace) -> int:
    """Print each client's samples and classes, and draw them, before anything is trained."""
    from fedunlearn.data import federated_data
    from fedunlearn.parts import for_seed, load_experiment
    from fedunlearn.phases.train import label_distribution_title
    from fedunlearn.report.federation import client_rows, client_table, draw_label_distribution

    overrides = [*args.set, *([f"seed={args.seed}"] if args.seed is not None else [])]
    cfg = for_seed(load_experiment(args.experiment, overrides))
    out = _out_dir(args, Path("runs") / Path(args.experiment).stem, None)
    data = federated_data(cfg.data, cfg.seed)
    print(f"{cfg.data.name}: {cfg.data.num_clients} clients, partition {cfg.data.partition}, seed {cfg.seed}; "
          f"test set {len(data.y_test)} samples; classes counted by the label each client trains on")
    print(client_table(client_rows(data, cfg.forgotten_clients())))
    path = draw_label_distribution(data, cfg.forgotten_clients(), out / f"label_distribution-seed{cfg.seed}.png",
                                   label_distribution_title(cfg))
    print(f"figure: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedunlearn.data import federated_data
    from fedunlearn.flower.runtime import run_federation
    from fedunlearn.parts import for_seed, load_experiment
    from fedunlearn.phases.train import train_phase
    from fedunlearn.provenance import check_owned
    from fedunlearn.tasks import task_of

    cfg = for_seed(load_experiment(args.experiment, args.set))
    if cfg.sweep:
        raise ConfigError("sweep: fedunlearn train trains one experiment; run the sweep with fedunlearn run, or "
                          "remove [sweep]")
    check_resources(cfg.simulation)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.experiment).stem}-train"
    check_owned(out)  # a training run never clears files it did not write
    out = _out_dir(args, out, "checkpoint")
    print(f"training {cfg.data.num_clients} clients on {cfg.data.name} for {cfg.train.rounds} rounds -> {out}")
    scorer = task_of(cfg).scorer(cfg, federated_data(cfg.data, cfg.seed), cfg.forget_requests())
    result = run_federation(cfg.data.num_clients, cfg.simulation,
                            lambda fed: train_phase(fed, cfg, out, scorer, resume=args.resume), out / "failures.log",
                            resources_checked=True)
    first = scorer.round_columns[0]
    print(f"final {first} {float(result.rows[-1][first]):.4f}; results in {out}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from fedunlearn.flower.runtime import run_federation
    from fedunlearn.phases.compare import write_summary
    from fedunlearn.phases.forget import prepare_forget
    from fedunlearn.report import markdown_table, read_summary

    request = request_from_flags(args.client, args.samples, args.forget_class)
    job = prepare_forget(args.run_dir, request, args.strategy, args.recovery_rounds, args.set)
    check_resources(job.cfg.simulation)
    out = _out_dir(args, Path(args.run_dir) / f"forget-{args.strategy}", "summary.csv")
    print(f"forgetting {job.cfg.forget[0].describe()} with {args.strategy} "
          f"(+{job.cfg.forgetting.recovery_rounds} recovery rounds) -> {out}")
    rows = run_federation(job.cfg.data.num_clients, job.cfg.simulation, lambda fed: job.run(fed, out),
                          out / "failures.log", resources_checked=True)
    write_summary(out, rows)
    print(markdown_table(read_summary(out)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fedunlearn.flower.runtime import run_federation
    from fedunlearn.parts import load_experiment
    from fedunlearn.phases.compare import check_comparison, compare
    from fedunlearn.report import markdown_table, read_summary

    cfg = load_experiment(args.experiment, args.set)
    if cfg.sweep:
        return run_sweep_command(args, cfg)
    check_comparison(cfg, args.seeds)
    check_resources(cfg.simulation)
    out = _out_dir(args, Path("runs") / Path(args.experiment).stem, "config.toml")
    print(f"comparing {', '.join(map(str, cfg.forgetting.strategies))} on {cfg.data.name}, forgetting "
          f"{'; '.join(r.describe() for r in cfg.forget_requests())}, {args.seeds} seed(s) -> {out}")
    run_federation(cfg.data.num_clients, cfg.simulation, lambda fed: compare(fed, cfg, out, args.seeds),
                   out / "failures.log", resources_checked=True)
    print(markdown_table(read_summary(out)))  # what `fedunlearn report OUT --markdown` prints
    _draw(out)
    return 0


def run_sweep_command(args: argparse.Namespace, cfg) -> int:
    """``fedunlearn run`` of an experiment with a ``[sweep]``: every point checked first, then compared."""
    from fedunlearn.flower.runtime import run_federation
    from fedunlearn.phases.sweep import point_configs, point_name, run_sweep
    from fedunlearn.report.plots import sweep_plot

    points = point_configs(args.experiment, args.set, cfg, args.seeds)
    check_resources(cfg.simulation)
    out = _out_dir(args, Path("runs") / Path(args.experiment).stem, "sweep.csv")
    print(f"sweeping {', '.join(cfg.sweep)}: {len(points)} point(s), {args.seeds} seed(s) each -> {out}")
    run_federation(cfg.data.num_clients, cfg.simulation, lambda fed: run_sweep(fed, points, out, args.seeds),
                   out / "failures.log", resources_checked=True)
    for point, _ in points:
        _draw(out / point_name(point))
    print(f"sweep: {out / 'sweep.csv'}; plot: {sweep_plot(out)}")
    return 0


def _draw(out: Path) -> None:
    from fedunlearn.report import draw_all, write_report

    plots = draw_all(out)
    report = write_report(out, plots)
    print(f"summary: {out / 'summary.csv'}; plots: {out / 'plots'}; report: {report}")


def cmd_plot(args: argparse.Namespace) -> int:
    from fedunlearn.report import read_summary

    read_summary(args.run_dir)  # a folder without results is refused before anything is drawn
    _draw(Path(args.run_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedunlearn.report import markdown_table, read_summary

    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    rows = read_summary(args.run_dir)
    unknown = [c for c in columns or [] if c not in rows[0]]
    if unknown:
        raise ConfigError(f"--columns: {unknown[0]!r} is not a column of summary.csv; choose from {list(rows[0])}")
    if args.html:
        from fedunlearn.report import draw_all
        from fedunlearn.report.html import write_html

        run_dir = Path(args.run_dir)
        plots = sorted((run_dir / "plots").glob("*.png")) or draw_all(run_dir)
        print(f"report: {write_html(run_dir, plots)}")
    if args.markdown or not args.html:
        print(markdown_table(rows, columns))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe the original model of a trained run, or --model (a strategy folder), against it."""
    from fedunlearn.flower.runtime import run_federation
    from fedunlearn.phases.probe import prepare_probe

    request = request_from_flags(args.client, args.samples, args.forget_class)
    job = prepare_probe(args.run_dir, request, args.metric, args.mode, args.max_rounds, args.model or [],
                        args.reference)
    check_resources(job.cfg.simulation)
    out = _out_dir(args, Path(args.run_dir), None)  # a probe's curves replace the last ones
    results = run_federation(job.cfg.data.num_clients, job.cfg.simulation, job.run, out / "failures.log",
                             resources_checked=True)
    job.write(out, results)
    for name, res in results[args.mode].items():
        print(f"{name}: delay {res.delay_text} {res.unit}{' (censored)' if res.censored else ''}, "
              f"AUC {res.auc:.3f}")
    print(f"curves: {out / 'probe' / (args.mode + '.csv')} (settings: {args.mode}.toml beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedunlearn", description="Federated unlearning simulator on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)

    def experiment_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment TOML file (see experiments/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nested keys (e.g. train.rounds=10)")
        p.add_argument("--out", help="results folder (default runs/<experiment name>, -train for `train`)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")

    def request_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--client", type=int, action="append", default=[], help="a client to forget (repeatable)")
        p.add_argument("--samples", metavar="ID:SELECTOR", help="samples of one client: ID:poisoned, ID:FRACTION "
                                                                "(e.g. 3:0.2) or ID:I,J,K (indices)")
        p.add_argument("--class", dest="forget_class", type=int, action="append", default=[], metavar="LABEL",
                       help="a class to forget from every client (repeatable)")

    data = sub.add_parser("data", help="show each client's samples and classes (table and figure) before training")
    data.add_argument("experiment", help="experiment TOML file (see experiments/)")
    data.add_argument("--seed", type=int, help="the seed whose partition to show (default the experiment's)")
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    data.add_argument("--out", help="folder of the figure (default runs/<experiment name>)")
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train a federation and keep its pseudo-gradients")
    experiment_args(train)
    train.set_defaults(func=cmd_train)

    forget = sub.add_parser("forget", help="forget clients of a trained run with one strategy")
    forget.add_argument("run_dir", help="a folder written by `fedunlearn train`")
    request_args(forget)
    forget.add_argument("--strategy", required=True, help="unlearning strategy (puf, puf+ieu, pga, federaser, ...)")
    forget.add_argument("--recovery-rounds", type=int, help="recovery rounds after the step (default from the config)")
    forget.add_argument("--set", action="append", default=[], metavar="forgetting.KEY=VALUE",
                        help="override a forgetting setting, e.g. forgetting.puf.eta=10")
    forget.add_argument("--out", help="results folder (default RUN_DIR/forget-STRATEGY)")
    forget.set_defaults(func=cmd_forget)

    probe = sub.add_parser("probe", help="relearning-delay probe of a trained run's model(s)")
    probe.add_argument("run_dir", help="a folder written by `fedunlearn train` (its model is the original)")
    request_args(probe)
    probe.add_argument("--model", action="append", help="also probe this folder's checkpoint (e.g. a strategy folder)")
    probe.add_argument("--reference", metavar="DIR", help="the retrained model's folder (e.g. RUN/forget-retrain/"
                                                          "strategies/retrain): what forget_ll is normalised by")
    probe.add_argument("--metric", default="auto", help="forget_acc, forget_loss, backdoor, forget_ll (generative) "
                                                        "or auto")
    probe.add_argument("--mode", default="all", choices=["all", "alone"], help="re-add to all clients, or alone (SGD steps)")
    probe.add_argument("--max-rounds", type=int, help="probe cap R_max (default from the config)")
    probe.add_argument("--out", help="the curves go to OUT/probe/MODE.csv, their settings to MODE.toml (default RUN_DIR)")
    probe.set_defaults(func=cmd_probe)

    plot = sub.add_parser("plot", help="redraw the plots and report.md of a comparison folder")
    plot.add_argument("run_dir", help="a folder written by `fedunlearn run`")
    plot.set_defaults(func=cmd_plot)

    report = sub.add_parser("report", help="print a results folder's summary as a Markdown table")
    report.add_argument("run_dir", help="a folder written by `fedunlearn run` or `fedunlearn forget`")
    report.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table (the default)")
    report.add_argument("--html", action="store_true", help="write DIR/report.html: one self-contained page, tables "
                                                            "sortable, plots embedded")
    report.add_argument("--columns", help="comma-separated summary.csv columns (default: the table's; "
                                          "e.g. test_acc,backdoor_asr,gap_backdoor_asr,relearn_delay)")
    report.set_defaults(func=cmd_report)

    run = sub.add_parser("run", help="train once, then compare every strategy the experiment lists")
    experiment_args(run)
    run.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up even when piped to a file
    from fedunlearn.flower.runtime import FederationError
    from fedunlearn.strategies import TooFewClientsError, UnlearningError

    try:
        return args.func(args)
    except (ConfigError, UnlearningError) as err:
        _remove_if_empty(getattr(args, "created", []))
        return _fail(str(err))
    except (FederationError, TooFewClientsError) as err:
        _remove_if_empty(getattr(args, "created", []))
        return _fail(str(err), code=1)
    except KeyboardInterrupt:
        _remove_if_empty(getattr(args, "created", []))
        return _interrupted(args)


def _interrupted(args: argparse.Namespace) -> int:
    """One line for Ctrl-C, then exit at once if threads are left that Python would wait for forever.

    Ctrl-C reaches Ray's processes too: Flower's ServerApp thread and its workers then wait for
    replies that never come (up to ``simulation.round_timeout_s``, or for good in ``ray.get``), and
    the interpreter joins them at exit. Every result is written atomically, so nothing is lost.
    """
    resume = " (finished pieces are kept: rerun with --resume to continue)" if hasattr(args, "resume") else ""
    code = _fail(f"interrupted{resume}", code=EXIT_INTERRUPTED)
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
