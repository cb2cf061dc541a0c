"""The researcher's workbench: the federation shown before training, clients named by rule."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fedunlearn.cli import main
from fedunlearn.data import federated_data
from fedunlearn.parts import load_experiment

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments/default.toml"


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_data_command_prints_every_client_and_draws_the_label_distribution(tmp_path, capsys):
    assert main(["data", str(DEFAULT), "--seed", "1", "--out", str(tmp_path)]) == 0
    rows = table_rows(capsys.readouterr().out)
    header, clients, total = rows[0], rows[1:-1], rows[-1]
    assert header[:4] == ["client", "samples", "poisoned", "forgotten"] and len(header) == 4 + 10
    cfg = load_experiment(DEFAULT, ["seed=1"])
    data = federated_data(cfg.data, 1)
    assert [int(r[1]) for r in clients] == [c.num_examples for c in data.clients]
    for r in clients:  # class counts add up to the client's samples
        assert sum(int(v) for v in r[4:]) == int(r[1])
    assert [r[3] for r in clients].count("yes") == len(cfg.forgotten_clients())
    assert int(total[1]) == sum(c.num_examples for c in data.clients)
    with Image.open(tmp_path / "label_distribution-seed1.png") as img:
        assert img.size[0] > 600 and len(set(img.convert("RGB").resize((200, 100)).getdata())) > 20
