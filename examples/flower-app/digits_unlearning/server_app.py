"""The ServerApp: train, forget the backdoored node with PUF + IEU, recover, probe, report.

Everything federated goes through fedunlearn's Flower strategies and Flower's own
``Strategy.start``; the ClientApp is this app's own (it knows nothing of unlearning). Retrain (the
federation trained again without the node) is the reference every model is scored against, and
PUF without IEU is run beside PUF + IEU, so the summary says what IEU adds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from digits_unlearning.task import TARGET_LABEL, Net, add_trigger, loader, test, test_split
from fedunlearn.report import draw_all, markdown_table, read_summary, write_report
from fedunlearn.serverapp import (
    IEUServerSide,
    PseudoGradientStore,
    PUFRound,
    RecordingFedAvg,
    evaluate_on_nodes,
    node_metrics,
    relearning_probe,
    threshold,
    wait_for_nodes,
    write_comparison,
)

app = ServerApp()
PROBE_CLOCK = 10_000  # probe rounds are numbered apart from training's, so no client seed repeats


def central_metrics(arrays: ArrayRecord) -> dict[str, float]:
    """Test accuracy and backdoor attack success rate on the server's held-out digits."""
    net = Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    x, y = test_split()
    _, acc = test(net, loader(x, y, 256))
    keep = y != TARGET_LABEL
    triggered = add_trigger(x[keep])
    _, asr = test(net, loader(triggered, torch.full((len(triggered),), TARGET_LABEL).numpy(), 256))
    return {"test_acc": acc, "backdoor_asr": asr}


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    seed, rounds = int(rc["seed"]), int(rc["num-server-rounds"])
    out = Path(str(rc["out"])).expanduser().resolve()
    torch.manual_seed(seed)
    initial = ArrayRecord(Net().state_dict())

    # Name nodes by the partition they report (node ids are random each run): seeds and order follow.
    nodes = wait_for_nodes(grid, int(rc["min-nodes"]))
    node_of = {int(m["partition-id"]): n for n, m in node_metrics(grid, initial, nodes).items()}
    forgotten = int(rc["backdoor-partition"])
    everyone = sorted(node_of)
    remaining = [p for p in everyone if p != forgotten]
    train_config = ConfigRecord({"seed": seed})

    def fedavg(store: PseudoGradientStore, participants: list[int], round_offset: int) -> RecordingFedAvg:
        return RecordingFedAvg(store, node_of=node_of, participants=participants, seed=seed, round_offset=round_offset)

    store = PseudoGradientStore()
    original = fedavg(store, everyone, 0).start(grid, initial, rounds, train_config=train_config).arrays
    retrain = fedavg(PseudoGradientStore(), remaining, 0).start(grid, initial, rounds, train_config=train_config).arrays

    def puf(ieu: bool) -> ArrayRecord:
        step = PUFRound(store, targets=[forgotten], eta=float(rc["puf-eta"]), node_of=node_of,
                        participants=remaining, seed=seed, round_offset=rounds)
        strategy = IEUServerSide(step, float(rc["ieu-decay"]), float(rc["ieu-noise"]), seed) if ieu else step
        arrays = strategy.start(grid, original, num_rounds=1, train_config=train_config).arrays
        return fedavg(store, remaining, rounds + 1).start(grid, arrays, int(rc["recovery-rounds"]),
                                                          train_config=train_config).arrays

    models = {"original": original, "retrain": retrain, "puf": puf(False), "puf+ieu": puf(True)}

    def forget_acc(arrays: ArrayRecord) -> float:  # measured on the forgotten node, where its data is
        return evaluate_on_nodes(grid, arrays, [node_of[forgotten]], "eval_acc")

    rows = []
    for name, arrays in models.items():
        rows.append({"strategy": name, "seed": seed, "forgotten": f"partition {forgotten}", **central_metrics(arrays),
                     "forget_acc": forget_acc(arrays),
                     "retain_acc": evaluate_on_nodes(grid, arrays, [node_of[p] for p in remaining], "eval_acc")})
    if rows[0]["backdoor_asr"] < 0.5:
        raise RuntimeError(f"the original model never learnt the backdoor (attack success {rows[0]['backdoor_asr']:.2f}"
                           " < 0.5): nothing to forget; train longer (num-server-rounds)")
    tau = threshold("forget_acc", rows[0]["forget_acc"], 0.1)
    probes = {name: relearning_probe(grid, fedavg(PseudoGradientStore(), everyone, PROBE_CLOCK), arrays, forget_acc,
                                     metric="forget_acc", tau=tau, max_rounds=int(rc["probe-rounds"]),
                                     train_config=train_config)
              for name, arrays in models.items()}
    write_comparison(out, rows, probes)
    write_report(out, draw_all(out))
    print(markdown_table(read_summary(out), ["test_acc", "backdoor_asr", "forget_acc", "retain_acc", "relearn_delay",
                                             "relearn_ratio_to_retrain"]))
    print(f"summary: {out / 'summary.csv'}; plots: {out / 'plots'}; report: {out / 'report.md'}")
