"""bench/mlp_attack.py on a small ReLU network: its simulation is what the client really decrypts,
and each of its attacks recovers the first layer's rows (the leakage scoring/fastmlp.py documents)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from aideploy_scoring import fastmlp as fm

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def attack():
    spec = importlib.util.spec_from_file_location("bench_mlp_attack", REPO / "bench" / "mlp_attack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(7)
    layers = [(rng.normal(size=(8, 16)) / 4, rng.normal(size=8) / 10),
              (rng.normal(size=(3, 8)), rng.normal(size=3) / 10)]
    # a service configured for batches of n + 16 samples (the batch attack's), as mlp_attack.served
    params = fm.choose_params(layers, "relu", min_samples=32)
    return layers[0][0], fm.MLPServer(layers, "relu", params, secret=b"attack-test-secret-attack-test!!")


def test_the_simulation_differs_from_the_real_view_by_the_flood_alone(attack, net):
    check = attack.validate(net[1], np.random.default_rng(0))
    assert check["within_bound"]
    assert 0.8 < check["std_over_uniform_flood_std"] < 1.2  # spread like the uniform flood


def test_one_batch_query_of_n_plus_one_samples_recovers_every_row(attack, net):
    W, server = net
    oracle = attack.RealOracle(server)
    res = attack.batch_attack(oracle, W, 1.0, 0.99, np.random.default_rng(1))
    assert oracle.queries == 1
    assert res["samples_per_unit"]["recovered"] == 1.0 and res["samples_all"] <= W.shape[1] + 1
    assert res["min_cosine_at_all"] > 0.9999
    assert res["cosine_at_samples"]["n/2"]["min_cosine"] < 0.99  # fewer probes than inputs do not


def test_fresh_keys_get_round_the_per_key_budget(attack, net):
    W, server = net
    res = attack.keys_attack(server, W, 8, 4, 0.99, np.random.default_rng(2))
    assert res["keys"] > 1 and res["refused_over_budget"] == res["keys"]  # each key hit its budget
    assert res["recovered"] == 1.0


def test_one_sample_per_query_recovers_the_rows(attack, net):
    W, server = net
    oracle = attack.SimulatedOracle(server, np.random.default_rng(3))
    res = attack.SingleSampleAttack(oracle, 16, 8, 1.0, server.plan.spread, np.random.default_rng(4)).run(
        W, 0.99, passes=4, max_lines=6, lines_min=2)
    assert res["queries_per_unit"]["recovered"] >= 0.75
    assert res["queries_total"] == oracle.queries
