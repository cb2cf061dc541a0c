"""Command line.

    fedunlearn train EXPERIMENT.toml [--set key=value ...] [--out DIR] [--resume]
    fedunlearn forget RUN_DIR --client 3 [--client 7] --strategy puf-ieu [--recovery-rounds R] [--set ...] [--out DIR]
    fedunlearn run EXPERIMENT.toml [--seeds N] [--set key=value ...] [--out DIR]
    fedunlearn probe RUN_DIR --client 3 [--metric backdoor] [--mode all|alone] [--max-rounds R] [--model DIR]
    fedunlearn plot DIR

Bad input (config, client ids, data root, run folder, a step size that makes weights NaN) prints
one line naming the field and the fix and exits with code 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fedunlearn.config import (
    ConfigError,
    ExperimentConfig,
    ForgetRequest,
    config_from_dict,
    config_to_dict,
    load_config,
    strategy_variant,
    validate_requests,
)

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fedunlearn: error: {message}", file=sys.stderr)
    return code


def _out_dir(args: argparse.Namespace, default: Path, marker: str) -> Path:
    out = Path(args.out) if args.out else default
    if (out / marker).exists() and not getattr(args, "resume", False):
        raise ConfigError(f"--out: {out} already holds results; pass --resume to continue or choose another --out")
    return out


def _load(args: argparse.Namespace) -> ExperimentConfig:
    """Load and check the experiment and its data before anything is written."""
    from fedunlearn.data import federated_data

    cfg = load_config(args.experiment, args.set)
    federated_data(cfg.data, cfg.seed)  # missing data files fail here, before any folder exists
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from fedunlearn.federation import run_federation
    from fedunlearn.phases.train import train_phase

    cfg = _load(args)
    out = _out_dir(args, Path("runs") / Path(args.experiment).stem, "checkpoint")
    print(f"training {cfg.data.num_clients} clients on {cfg.data.name} for {cfg.train.rounds} rounds -> {out}")
    result = run_federation(cfg.data.num_clients, cfg.simulation,
                            lambda fed: train_phase(fed, cfg, out, resume=args.resume))
    print(f"final test accuracy {float(result.rows[-1]['test_acc']):.4f}; results in {out}")
    return 0


def _forget_config(args: argparse.Namespace) -> tuple[ExperimentConfig, int]:
    """The trained run's config with this command's request, and the round it was trained to."""
    from fedunlearn.results import RunDir
    from fedunlearn.strategies import STRATEGIES

    run = RunDir(args.run_dir)
    if not run.config.exists() or not run.checkpoint.exists():
        raise ConfigError(f"RUN_DIR: {args.run_dir} holds no trained run (config.toml and checkpoint/); "
                          "run `fedunlearn train` first")
    bad = [o for o in args.set if not o.startswith("forgetting.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: forget only takes forgetting.* overrides; the federation is the trained run's")
    cfg = load_config(run.config, args.set)
    _, last_round = run.load_checkpoint()
    if args.strategy.partition("@")[0] not in STRATEGIES:
        raise ConfigError(f"--strategy: unknown strategy {args.strategy!r}; choose from {sorted(STRATEGIES)}")
    strategy_variant(args.strategy, cfg.forgetting)
    request = ForgetRequest(sorted(set(args.client)), last_round)
    validate_requests([request], cfg.data.num_clients, last_round, "--client")
    if STRATEGIES[args.strategy.partition("@")[0]].needs_history and not cfg.store.history:
        raise ConfigError(f"--strategy: {args.strategy} needs the pseudo-gradient history, which {args.run_dir} "
                          "did not keep; train with --set store.history=true")
    forgetting = dataclasses.replace(cfg.forgetting, recovery="fixed",
                                     recovery_rounds=cfg.forgetting.recovery_rounds if args.recovery_rounds is None
                                     else args.recovery_rounds)
    if forgetting.recovery_rounds < 0:
        raise ConfigError("--recovery-rounds: must be >= 0")
    train = dataclasses.replace(cfg.train, rounds=last_round)
    return dataclasses.replace(cfg, forget=[request], forgetting=forgetting, train=train), last_round


def cmd_forget(args: argparse.Namespace) -> int:
    from fedunlearn.data import federated_data
    from fedunlearn.evaluation import Scorer
    from fedunlearn.federation import run_federation
    from fedunlearn.phases.compare import write_summary
    from fedunlearn.phases.forget import Snapshot, run_strategy
    from fedunlearn.results import RunDir
    from fedunlearn.store import PseudoGradientStore

    cfg, last_round = _forget_config(args)
    out = _out_dir(args, Path(args.run_dir) / f"forget-{args.strategy}", "summary.csv")
    run = RunDir(args.run_dir)
    weights, _ = run.load_checkpoint()
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), cfg.forget[0].clients)
    store = PseudoGradientStore.load(run.store, int(cfg.store.ram_budget_mb * 2**20))
    snapshot = Snapshot(weights, last_round, store, store, scorer.initial_weights())
    print(f"forgetting clients {cfg.forget[0].clients} with {args.strategy} "
          f"(+{cfg.forgetting.recovery_rounds} recovery rounds) -> {out}")
    outcome = run_federation(cfg.data.num_clients, cfg.simulation,
                             lambda fed: run_strategy(fed, cfg, args.strategy, snapshot, out / "strategies" / args.strategy))
    rows = [{"strategy": "original", "seed": cfg.seed, **scorer.summary_metrics(weights)},
            {**outcome.row(), "seed": cfg.seed, **scorer.summary_metrics(outcome.weights)}]
    write_summary(out, rows)
    print_table(rows)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fedunlearn.federation import run_federation
    from fedunlearn.phases.compare import compare
    from fedunlearn.results import RunDir
    from fedunlearn.strategies import STRATEGIES

    cfg = _load(args)
    if not cfg.forget:
        raise ConfigError("forget: the experiment has no [[forget]] request; add one, e.g. [[forget]] clients = [0]")
    needs = [n for n in cfg.forgetting.strategies if STRATEGIES[strategy_variant(n, cfg.forgetting)[0]].needs_history]
    if needs and not cfg.store.history:
        raise ConfigError(f"forgetting.strategies: {', '.join(needs)} needs the pseudo-gradient history; "
                          "set store.history = true")
    if args.seeds < 1:
        raise ConfigError("--seeds: must be >= 1")
    out = _out_dir(args, Path("runs") / Path(args.experiment).stem, "config.toml")
    RunDir(out).write_config(cfg)
    print(f"comparing {', '.join(cfg.forgetting.strategies)} on {cfg.data.name}, forgetting "
          f"{[r.clients for r in cfg.forget_requests()]}, {args.seeds} seed(s) -> {out}")
    rows = run_federation(cfg.data.num_clients, cfg.simulation, lambda fed: compare(fed, cfg, out, args.seeds))
    print_table(rows)
    _draw(out)
    return 0


def _draw(out: Path) -> None:
    from fedunlearn.report import draw_all, write_report

    plots = draw_all(out)
    report = write_report(out, plots)
    print(f"summary: {out / 'summary.csv'}; plots: {out / 'plots'}; report: {report}")


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.run_dir)
    if not (out / "summary.csv").exists():
        raise ConfigError(f"RUN_DIR: {out} has no summary.csv; pass a folder written by `fedunlearn run`")
    _draw(out)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe the original model of a trained run, or --model (a strategy folder), against it."""
    from fedunlearn.data import federated_data
    from fedunlearn.evaluation import Scorer
    from fedunlearn.federation import run_federation
    from fedunlearn.phases.compare import write_probes
    from fedunlearn.phases.probe import probe_models
    from fedunlearn.results import RunDir

    run = RunDir(args.run_dir)
    if not run.config.exists() or not run.checkpoint.exists():
        raise ConfigError(f"RUN_DIR: {args.run_dir} holds no trained run; run `fedunlearn train` first")
    cfg = load_config(run.config)
    request = ForgetRequest(sorted(set(args.client)), 1)
    validate_requests([request], cfg.data.num_clients, 1, "--client")
    probe = dataclasses.replace(cfg.probe, metric=args.metric, modes=[args.mode],
                                max_rounds=args.max_rounds or cfg.probe.max_rounds)
    cfg = config_from_dict(config_to_dict(dataclasses.replace(cfg, probe=probe)))  # re-validated
    original, _ = run.load_checkpoint()
    models = {"original": original}
    for path in args.model or []:
        models[Path(path).name], _ = RunDir(path).load_checkpoint()
    scorer = Scorer(cfg, federated_data(cfg.data, cfg.seed), request.clients)
    out = Path(args.out) if args.out else run.path
    results = run_federation(cfg.data.num_clients, cfg.simulation,
                             lambda fed: probe_models(fed, cfg, scorer, original, models))
    write_probes(out, results)
    for name, res in results[args.mode].items():
        print(f"{name}: delay {res.delay_text} {res.unit}{' (censored)' if res.censored else ''}, "
              f"AUC {res.auc:.3f}")
    print(f"curves: {out / 'probe' / (args.mode + '.csv')}")
    return 0


def print_table(rows: list[dict]) -> None:
    columns = ["strategy", "seed", "test_acc", "retain_acc", "forget_acc", "backdoor_asr", "recovery_rounds",
               "client_epochs", "wall_s"]
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedunlearn", description="Federated unlearning simulator on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)

    def experiment_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment TOML file (see experiments/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nested keys (e.g. train.rounds=10)")
        p.add_argument("--out", help="results folder (default runs/<experiment name>)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")

    train = sub.add_parser("train", help="train a federation and keep its pseudo-gradients")
    experiment_args(train)
    train.set_defaults(func=cmd_train)

    forget = sub.add_parser("forget", help="forget clients of a trained run with one strategy")
    forget.add_argument("run_dir", help="a folder written by `fedunlearn train`")
    forget.add_argument("--client", type=int, action="append", required=True, help="client id to forget (repeatable)")
    forget.add_argument("--strategy", required=True, help="unlearning strategy (puf, puf-ieu, pga, federaser, ...)")
    forget.add_argument("--recovery-rounds", type=int, help="recovery rounds after the step (default from the config)")
    forget.add_argument("--set", action="append", default=[], metavar="forgetting.KEY=VALUE",
                        help="override a forgetting setting, e.g. forgetting.puf_eta=10")
    forget.add_argument("--out", help="results folder (default RUN_DIR/forget-STRATEGY)")
    forget.set_defaults(func=cmd_forget)

    probe = sub.add_parser("probe", help="relearning-delay probe of a trained run's model(s)")
    probe.add_argument("run_dir", help="a folder written by `fedunlearn train` (its model is the original)")
    probe.add_argument("--client", type=int, action="append", required=True, help="forgotten client id (repeatable)")
    probe.add_argument("--model", action="append", help="also probe this folder's checkpoint (e.g. a strategy folder)")
    probe.add_argument("--metric", default="auto", help="forget_acc, forget_loss, backdoor or auto")
    probe.add_argument("--mode", default="all", choices=["all", "alone"], help="re-add to all clients, or alone (SGD steps)")
    probe.add_argument("--max-rounds", type=int, help="probe cap R_max (default from the config)")
    probe.add_argument("--out", help="the curves go to OUT/probe/MODE.csv (default RUN_DIR)")
    probe.set_defaults(func=cmd_probe)

    plot = sub.add_parser("plot", help="redraw the plots and report.md of a comparison folder")
    plot.add_argument("run_dir", help="a folder written by `fedunlearn run`")
    plot.set_defaults(func=cmd_plot)

    run = sub.add_parser("run", help="train once, then compare every strategy the experiment lists")
    experiment_args(run)
    run.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up even when piped to a file
    from fedunlearn.federation import FederationError
    from fedunlearn.strategies import TooFewClientsError, UnlearningError

    try:
        return args.func(args)
    except (ConfigError, UnlearningError) as err:
        return _fail(str(err))
    except (FederationError, TooFewClientsError) as err:
        return _fail(str(err), code=1)


if __name__ == "__main__":
    sys.exit(main())
