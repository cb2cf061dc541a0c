"""RecordingFedAvg on mock replies: aggregation, recording, ordering, sampling, failures."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedunlearn.flower.runtime import ClientFailureError, FailureWatch
from fedunlearn.store import PseudoGradientStore
from fedunlearn.strategies import RecordingFedAvg, TooFewClientsError
from tests.mocks import error_reply, reply_with, train_reply

GLOBAL = [np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([[0.5, -0.5]], dtype=np.float32)]


def make_strategy(num_clients=3, **kwargs) -> RecordingFedAvg:
    store = PseudoGradientStore(keep_history=True)
    node_of = {p: 100 + p for p in range(num_clients)}
    return RecordingFedAvg(store, node_of=node_of, participants=range(num_clients), seed=0, base_config={"lr": 0.1},
                           **kwargs)


def client_weights(pid: int) -> list[np.ndarray]:
    rng = np.random.default_rng(pid)
    return [(g + rng.normal(size=g.shape)).astype(np.float32) for g in GLOBAL]


def configured(strategy: RecordingFedAvg, rnd: int = 1):
    return list(strategy.configure_train(rnd, ArrayRecord(GLOBAL), ConfigRecord(), grid=None))


def test_aggregate_is_weighted_mean_of_client_weights():
    s = make_strategy()
    configured(s)
    sizes = {0: 10, 1: 30, 2: 60}
    arrays, metrics = s.aggregate_train(1, [train_reply(p, n, client_weights(p), loss=p) for p, n in sizes.items()])
    got = arrays.to_numpy_ndarrays()
    for i in range(len(GLOBAL)):
        expected = sum(n / 100 * client_weights(p)[i] for p, n in sizes.items())
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx((0 * 10 + 1 * 30 + 2 * 60) / 100)


def test_server_lr_scales_the_mean_pseudo_gradient():
    s = make_strategy(server_lr=0.5)
    configured(s)
    arrays, _ = s.aggregate_train(1, [train_reply(p, 10, client_weights(p)) for p in range(3)])
    mean_delta = [sum(client_weights(p)[i] - GLOBAL[i] for p in range(3)) / 3 for i in range(2)]
    for got, g, d in zip(arrays.to_numpy_ndarrays(), GLOBAL, mean_delta, strict=True):
        np.testing.assert_allclose(got, g + 0.5 * d, rtol=1e-6, atol=1e-6)


def test_every_reply_pseudo_gradient_is_recorded():
    s = make_strategy()
    configured(s, rnd=4)
    s.aggregate_train(4, [train_reply(p, 10 + p, client_weights(p)) for p in range(3)])
    for p in range(3):
        entry = s.store.get(p, 4)
        assert entry.num_examples == 10 + p
        for d, w, g in zip(entry.delta, client_weights(p), GLOBAL, strict=True):
            np.testing.assert_array_equal(d, w - g)
        assert s.store.latest(p).server_round == 4


def test_result_does_not_depend_on_reply_order():
    outs = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        s = make_strategy()
        configured(s)
        arrays, _ = s.aggregate_train(1, [train_reply(p, 7 + 13 * p, client_weights(p)) for p in order])
        outs.append(arrays.to_numpy_ndarrays())
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)  # bit for bit


def test_failures_are_counted_and_the_round_goes_on_above_the_minimum():
    s = make_strategy(min_train_nodes=2)
    configured(s)
    arrays, metrics = s.aggregate_train(1, [train_reply(0, 10, client_weights(0)), error_reply(1, "boom"),
                                            train_reply(2, 10, client_weights(2))])
    assert metrics["failures"] == 1 and metrics["clients"] == 2
    assert "boom" in s.report.failures[0]
    assert s.report.succeeded == [0, 2]


def test_a_reply_shaped_unlike_the_model_is_a_failure_not_a_broadcast_delta():
    s = make_strategy(min_train_nodes=2)
    configured(s)
    wrong = [np.ones(1, np.float32), np.ones((1, 2), np.float32)]  # numpy would broadcast (1,) against (3,)
    _, metrics = s.aggregate_train(1, [train_reply(0, 10, client_weights(0)), train_reply(1, 10, wrong),
                                       train_reply(2, 10, client_weights(2))])
    assert metrics["failures"] == 1 and s.report.succeeded == [0, 2]
    assert s.report.failures == ["client 1: reply's arrays have shapes [(1,), (1, 2)], the model sent [(3,), (1, 2)]"]


def test_a_malformed_reply_counts_towards_the_failure_streak():
    strategy, lines = make_strategy(), []
    watch = FailureWatch({100 + p: p for p in range(3)}, max_failed_rounds=2, failure_log=None, log=lines.append)
    bare = reply_with(1, RecordDict({"arrays": ArrayRecord(client_weights(1))}))  # no MetricRecord
    replies = [train_reply(0, 10, client_weights(0)), bare, train_reply(2, 10, client_weights(2))]
    watch.check("training", 1, configured(strategy), replies, timeout=1)
    assert lines == ["  training round 1: 1 of 3 clients failed (client 1: reply without an ArrayRecord and one "
                     "MetricRecord with num-examples)"]
    with pytest.raises(ClientFailureError, match="client 1 failed in 2 rounds in a row"):
        watch.check("training", 2, configured(strategy, 2), replies, timeout=1)


def test_too_few_successes_stop_the_run():
    s = make_strategy()  # min 0: every sampled client must succeed
    configured(s)
    with pytest.raises(TooFewClientsError, match="2 of 3 sampled clients succeeded"):
        s.aggregate_train(1, [train_reply(0, 10, client_weights(0)), error_reply(1),
                              train_reply(2, 10, client_weights(2))])


def test_sampling_is_seeded_and_only_from_participants():
    s = make_strategy(num_clients=10, fraction_train=0.3)
    s.participants = [0, 2, 3, 5, 6, 8, 9]
    first = [s.sample(r) for r in range(1, 6)]
    assert first == [s.sample(r) for r in range(1, 6)]
    assert all(len(x) == 2 and set(x) <= set(s.participants) for x in first)
    assert len({tuple(x) for x in first}) > 1  # differs between rounds


def test_configure_train_addresses_nodes_by_partition_and_sends_the_recipe():
    s = make_strategy()
    messages = configured(s, rnd=3)
    assert sorted(m.metadata.dst_node_id for m in messages) == [100, 101, 102]
    config = messages[0].content["config"]
    assert config["server-round"] == 3 and config["lr"] == pytest.approx(0.1) and config["seed"] == 0
