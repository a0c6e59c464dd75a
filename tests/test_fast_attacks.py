"""Issue 27's attacks on the fast scheme's model privacy, replayed against the real server classes.

The client is the adversary here: it sends whatever bytes serve it best. Each test builds the
attack's bytes by hand from an honest client's (so that it does not depend on the client's
code refusing to make them) and checks that the service refuses them with a reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from aideploy_scoring import fastlinear as fl
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.encrypted import FastMLPScheme, FastScheme
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError, FastServer
from aideploy_scoring.inputranges import InputRanges
from aideploy_scoring.keyfetch import KeyFetcher
from aideploy_scoring.service import LinearModel

_BUNDLE_HEAD = struct.Struct("<4sB3sI")  # magic, version, reserved, length of the parameters' JSON
_FLAGS_AT = 6  # a query's u16 flags: after magic (4), version (1) and layout (1)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(27)
    W, b = rng.normal(size=(10, 64)) * 0.3, rng.normal(size=10) * 0.1
    server = FastServer(W, b)
    client = FastClient(64, 10, server.params)
    return W, b, server, client


def key_material_at(bundle: bytes) -> int:
    """Where a bundle's key material starts: after its header and parameters."""
    return _BUNDLE_HEAD.size + _BUNDLE_HEAD.unpack_from(bundle)[3]


def with_key(bundle: bytes, material: bytes) -> bytes:
    return bundle[:key_material_at(bundle)] + material


# ------------------------------------------------------------------ the public key


def test_an_all_zero_public_key_is_refused(linear):
    """Finding 1: with key (0, 0) the re-randomisation was only small noise, and every weight
    came back in one query."""
    _, _, server, client = linear
    bundle = client.public_bundle()
    with pytest.raises(FastSchemeError, match="degenerate"):
        server.load_public(with_key(bundle, bytes(len(bundle) - key_material_at(bundle))))


def _residues(bundle: bytes, n: int) -> np.ndarray:
    """The key's last ``3 * n`` residues (pk0's, in the new format) as a writable array."""
    return np.frombuffer(bundle[-12 * n:], dtype="<u4").copy().reshape(3, n)


@pytest.mark.parametrize("how, words", [
    ("constant", "degenerate"),
    ("small", "degenerate"),  # pk0 = e alone: the key of the secret s = 0
    ("repeating", "degenerate"),
    ("out of range", "out of range"),
    ("truncated", "bytes"),
    ("padded", "bytes"),
])
def test_degenerate_or_malformed_public_keys_are_refused(linear, how, words):
    _, _, server, client = linear
    bundle = client.public_bundle()
    n = server.params.poly_modulus_degree
    pk0 = _residues(bundle, n)
    if how == "constant":
        pk0[:] = 12345
    elif how == "small":
        pk0[:] = np.random.default_rng(1).integers(0, 21, size=pk0.shape)
    elif how == "repeating":
        pk0[:] = np.tile(pk0[:, :64], (1, n // 64))
    elif how == "out of range":
        pk0[0, 5] = 0xFFFFFFFF
    head = bundle[:-12 * n]
    evil = {"truncated": bundle[:-4], "padded": bundle + bytes(4)}.get(how, head + pk0.astype("<u4").tobytes())
    with pytest.raises(FastSchemeError, match=words):
        server.load_public(evil)


# ------------------------------------------------------------------ the query


def test_a_query_with_a_chosen_uniform_polynomial_is_refused(linear):
    """The unseeded form let the client pick ``a`` (e.g. 1, so that c1' = W + z1)."""
    _, _, server, client = linear
    public = server.load_public(client.public_bundle())
    query = bytearray(client.encrypt(np.zeros((1, 64))))
    struct.pack_into("<H", query, _FLAGS_AT, 1)
    body = len(query) - fl._QUERY_HEADER.size
    chosen_a = np.ones(body // 4, dtype="<u4").tobytes()  # NTT of the constant 1 is all ones
    with pytest.raises(FastSchemeError, match="flags|unseeded"):
        server.predict(bytes(query) + chosen_a, public)


def test_a_query_over_the_samples_the_flooding_covers_is_refused(linear):
    _, _, server, client = linear
    public = server.load_public(client.public_bundle())
    cap = server.max_samples
    assert cap >= 1
    with pytest.raises(FastSchemeError, match="max_samples_per_query"):
        server.predict(client.encrypt(np.zeros((cap + 1, 64)), layout="row"), public)
    assert server.predict(client.encrypt(np.zeros((min(cap, 2), 64))), public)


def test_an_answer_over_the_answer_cap_is_refused(linear, monkeypatch):
    _, _, server, client = linear
    public = server.load_public(client.public_bundle())
    query = client.encrypt(np.zeros((2, 64)), layout="row")
    monkeypatch.setattr(fl, "MAX_ANSWER_BYTES", len(query))
    with pytest.raises(FastSchemeError, match="MAX_ANSWER_BYTES|answer"):
        server.predict(query, public)


# ------------------------------------------------------------------ the parameters


def test_a_bundle_with_the_clients_own_parameters_is_refused(linear):
    """Finding 3: the service built a server for whatever parameters a bundle named (here
    t=2^50, s_x=2^14, s_w=2^26: a flood margin of 4.4 bits for this model). The service serves
    its own parameters only."""
    W, b, _, _ = linear
    scheme = FastScheme(LinearModel(W, b), KeyFetcher())
    own = FastParams(plain_modulus_bits=50, x_scale_bits=14, w_scale_bits=26)
    with pytest.raises(ValueError, match="parameters"):
        scheme._load(FastClient(64, 10, own).public_bundle())


def test_mlp_queries_hold_one_sample_unless_the_service_says_otherwise(monkeypatch):
    from aideploy_scoring.encrypted import MAX_SAMPLES_ENV

    monkeypatch.delenv(MAX_SAMPLES_ENV, raising=False)
    rng = np.random.default_rng(3)
    layers = [(rng.normal(size=(8, 16)) * 0.2, np.zeros(8)), (rng.normal(size=(3, 8)) * 0.2, np.zeros(3))]
    assert FastMLPScheme(layers, "relu", KeyFetcher(), secret=bytes(32)).budget.per_query == 1


def test_an_mlp_round_over_the_samples_the_flooding_covers_is_refused():
    rng = np.random.default_rng(4)
    layers = [(rng.normal(size=(8, 16)) * 0.2, np.zeros(8)), (rng.normal(size=(3, 8)) * 0.2, np.zeros(3))]
    params = fm.choose_params(layers, "relu", max_error=1e-4)  # a flood that covers a few dozen samples
    server = fm.MLPServer(layers, "relu", params, secret=bytes(32))
    client = fm.MLPClient(server.sizes, "relu", server.params)
    public = server.load_public(client.public_bundle())
    cap = server.max_samples
    assert 1 <= cap < 100
    with pytest.raises(FastSchemeError, match="max_samples_per_query"):
        server.score(client.encrypt(np.zeros((cap + 1, 16))), public)


def test_the_service_publishes_the_parameters_it_chose_and_no_client_input_changes_them(monkeypatch):
    """``GET /score`` describes the parameters the service chose from its model, its input ranges
    and its configured ``max_error`` (the MLP's layer sizes too), with their caps and the ranges;
    query arguments no longer reach it (finding 5: each new pair started a parameter search)."""
    import io
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from aideploy_scoring import encrypted
    from aideploy_scoring.linearize import fold_mlp
    from aideploy_scoring.model_sklearn import SklearnModel
    from aideploy_scoring.service import ScoringService

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = LogisticRegression(max_iter=300).fit(X[:500], y[:500])
        mlp = MLPClassifier((8,), max_iter=50, random_state=0).fit(X[:500], y[:500])
    monkeypatch.setenv(encrypted.MAX_ERROR_ENV, "0.002")
    described = {}
    for name, model in (("linear", linear), ("mlp", mlp)):
        service = ScoringService(SklearnModel(model))
        service._register_encrypted_schemes()
        status, info = service.handle_http("GET", {}, io.BytesIO(b""), 0)
        assert status == 200
        described[name] = fast = info["fast"]
        assert fast["statistical_distance_log2"] == -40 and fast["max_key_bytes"] == fl.MAX_KEY_BYTES
        assert fast["max_samples_per_query"] >= 1 and fast["max_answer_bytes"] == fl.MAX_ANSWER_BYTES
        assert service.scheme("fast").fetcher.max_key_bytes == fl.MAX_KEY_BYTES
    # neither model records anything of its inputs, and no data was given: [-1, 1] for every feature
    ranges = InputRanges.uniform(64, 1.0)
    for fast in described.values():
        assert InputRanges.from_json(fast["input_ranges"]).digest() == ranges.digest()
    assert FastParams.from_json(json.dumps(described["linear"]["params"]).encode()) == \
        replace(fl.choose_params(linear.coef_, linear.intercept_, 1.0, 0.002), input_ranges=ranges.digest())
    layers, activation = fold_mlp(mlp)
    assert FastParams.from_json(json.dumps(described["mlp"]["params"]).encode()) == \
        replace(fm.choose_params(layers, activation, 1.0, 0.002), input_ranges=ranges.digest())
    assert described["mlp"]["mlp"] == {"sizes": [64, 8, 10], "activation": "relu"}
