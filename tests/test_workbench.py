"""The researcher's workbench: the federation shown before training, clients named by rule."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fedunlearn.cli import main
from fedunlearn.config import load_config
from fedunlearn.data import federated_data, partition
from fedunlearn.parts import for_seed, load_experiment

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


def test_rules_name_clients_per_seed_on_that_seeds_partition():
    cfg = load_experiment(DEFAULT, ['forget=[{clients=["largest"]}, {clients=["median", "random"], round=20}]',
                                    'data.backdoor.clients=["forgotten"]'])
    picked = {}
    for seed in (0, 1, 2):
        resolved = for_seed(cfg, seed)
        sizes = [len(p) for p in partition(cfg.data, seed)[1]]
        largest = resolved.forget[0].clients[0]
        assert sizes[largest] == max(sizes) and largest == sizes.index(max(sizes))
        median, random_pick = resolved.forget[1].clients
        others = sorted((c for c in range(10) if c != largest), key=lambda c: (sizes[c], c))
        assert median == others[4]
        assert random_pick not in (largest, median)
        assert resolved.data.backdoor.clients == resolved.forgotten_clients() == sorted([largest, median, random_pick])
        data = federated_data(resolved.data, seed)
        assert all(len(data.clients[c].poisoned) > 0 for c in resolved.forgotten_clients())
        assert for_seed(cfg, seed) == resolved  # the same seed picks the same clients
        picked[seed] = largest
    assert len(set(picked.values())) > 1  # the largest client changes with the seed's partition
    assert cfg.forget[0].clients == ["largest"]  # the experiment keeps its rules


def test_an_unknown_rule_is_refused_with_one_line(tmp_path, capsys):
    code = main(["data", str(DEFAULT), "--set", 'forget=[{clients=["biggest"]}]', "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "forget[0].clients: 'biggest' is neither a client id nor a rule" in err[0]
    code = main(["data", str(DEFAULT), "--set", 'data.backdoor.clients=["everyone"]', "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "data.backdoor.clients: 'everyone' is neither a client id nor one of" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_comparison_records_which_client_a_rule_named_in_each_seed(tmp_path):
    from fedunlearn.phases.compare import compare
    from fedunlearn.results import read_csv
    from tests.local_grid import local_federation
    from tests.test_reliability import TINY

    cfg = load_experiment(DEFAULT, [*TINY, 'forget=[{clients=["largest"]}]', 'data.backdoor.clients=["forgotten"]',
                                    "forgetting.strategies=['retrain', 'puf']", "probe.enabled=false"])
    compare(local_federation(4, log=lambda *_: None), cfg, tmp_path, seeds=2, log=lambda *_: None)
    rows = read_csv(tmp_path / "summary.csv")
    for seed in (0, 1):
        sizes = [len(p) for p in partition(cfg.data, seed)[1]]
        assert {r["forgotten"] for r in rows if r["seed"] == str(seed)} == {f"client {sizes.index(max(sizes))}"}
        recorded = load_config(tmp_path / f"seed-{seed}" / "train" / "config.toml")
        assert recorded.forget[0].clients == [sizes.index(max(sizes))]
    assert load_config(tmp_path / "config.toml").forget[0].clients == ["largest"]
