"""benchmarks/influence.py: bad arguments exit 2 with one line, and the crossing point is read right.

The benchmark itself (a child process per cell, each importing torch) takes tens of seconds even
with ``--quick``, so it is not run here; docs/benchmarks.md has a run's tables.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "influence.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_influence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(value: int, primal_s: float, dual_s: float) -> dict:
    return {"p": value, "n": value, "primal": {"seconds": primal_s}, "dual": {"seconds": dual_s}}


@pytest.mark.parametrize("args", [["--hidden", "0,4"], ["--ns", "x"], ["--damping", "0"], ["--n", "2000"],
                                  ["--forget", "100", "--ns", "50"], ["--repeats", "0"]])
def test_bad_arguments_exit_2_with_one_line(args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_crossing_point():
    crossing = _module().crossing
    # dual faster at small sizes, slower from 100 on: crosses between 10 and 100, at √(10·100) when symmetric
    text = crossing([_row(1, 4.0, 1.0), _row(10, 2.0, 1.0), _row(100, 1.0, 2.0)], "n")
    assert "slower than the primal between n = 10 and 100 (about n = 32" in text
    assert "never" in crossing([_row(1, 1.0, 2.0), _row(10, 1.0, 3.0)], "p")
    assert "every p" in crossing([_row(1, 2.0, 1.0), _row(10, 3.0, 1.0)], "p")
