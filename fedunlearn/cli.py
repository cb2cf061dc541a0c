"""Command line: ``fedunlearn train EXPERIMENT.toml [--set key=value ...] [--out DIR] [--resume]``.

Bad input (config, data root, run folder) prints one line naming the field and the fix and exits
with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedunlearn.config import ConfigError, ExperimentConfig, load_config

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fedunlearn: error: {message}", file=sys.stderr)
    return code


def _prepare(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    """Load and check everything a run needs before anything is written."""
    from fedunlearn.data import federated_data

    cfg = load_config(args.experiment, args.set)
    federated_data(cfg.data, cfg.seed)  # missing data files fail here, before the run folder exists
    out = Path(args.out) if args.out else Path("runs") / Path(args.experiment).stem
    if (out / "checkpoint").exists() and not args.resume:
        raise ConfigError(f"--out: {out} already holds a run; pass --resume to continue it or choose another --out")
    return cfg, out


def cmd_train(args: argparse.Namespace) -> int:
    from fedunlearn.federation import run_federation
    from fedunlearn.phases.train import train_phase

    cfg, out = _prepare(args)
    print(f"training {cfg.data.num_clients} clients on {cfg.data.name} for {cfg.train.rounds} rounds -> {out}")
    result = run_federation(cfg.data.num_clients, cfg.simulation,
                            lambda fed: train_phase(fed, cfg, out, resume=args.resume))
    print(f"final test accuracy {float(result.rows[-1]['test_acc']):.4f}; results in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedunlearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a federation and keep its pseudo-gradients")
    train.add_argument("experiment", help="experiment TOML file (see experiments/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nested keys (e.g. train.rounds=10)")
    train.add_argument("--out", help="run folder (default runs/<experiment name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fedunlearn.federation import FederationError
    from fedunlearn.strategies import TooFewClientsError

    try:
        return args.func(args)
    except ConfigError as err:
        return _fail(str(err))
    except (FederationError, TooFewClientsError) as err:
        return _fail(str(err), code=1)


if __name__ == "__main__":
    sys.exit(main())
