"""Tests of the encrypted MLP protocol (aideploy_scoring.fastmlp), with real SEAL, no mocks."""

from __future__ import annotations

import functools
import struct
import warnings

import numpy as np
import pytest

from aideploy_scoring import fastkernels as fk
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.fastlinear import FastSchemeError
from aideploy_scoring.linearize import fold_mlp
from aideploy_scoring.models import NotLinear

SECRET = b"test-deployment-secret-32-bytes!"


@functools.lru_cache(maxsize=None)
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@functools.lru_cache(maxsize=None)
def trained(hidden: tuple[int, ...], activation: str = "relu", pipeline: bool = False):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    X, y = digits()
    mlp = MLPClassifier(hidden, activation=activation, max_iter=200, random_state=0)
    model = make_pipeline(MinMaxScaler(), mlp) if pipeline else mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: accuracy is not what is tested
        model.fit(X[:1400], y[:1400])
    return model


@functools.lru_cache(maxsize=None)
def deployed(hidden: tuple[int, ...], pipeline: bool = False):
    model = trained(hidden, pipeline=pipeline)
    layers, activation = fold_mlp(model)
    # parameters whose flood covers the whole test set in one query (the tests send it at once)
    params = fm.choose_params(layers, activation, min_samples=len(digits()[0]) - 1400)
    server = fm.MLPServer(layers, activation, params, secret=SECRET)
    client = fm.MLPClient(server.sizes, activation, server.params)
    public = server.load_public(client.public_bundle())
    return model, server, client, public


def plain_logits(layers, X):
    h = X
    for W, b in layers[:-1]:
        h = np.maximum(h @ W.T + b, 0.0)
    W, b = layers[-1]
    return h @ W.T + b


# ------------------------------------------------------------------ correctness


@pytest.mark.parametrize("hidden", [(32,), (32, 16)])
def test_batch_agrees_with_sklearn(hidden):
    model, server, client, public = deployed(hidden)
    X, _ = digits()
    Xt = X[1400:]
    step = server.max_samples  # the whole test set at once where the flooding covers it (one hidden layer)
    assert step >= 100
    got = np.vstack([client.predict(Xt[i:i + step], lambda m: server.score(m, public))
                     for i in range(0, len(Xt), step)])
    layers, _ = fold_mlp(model)
    want = plain_logits(layers, Xt)
    # the folded layers are sklearn's own network: same classes as model.predict
    assert np.array_equal(model.classes_[want.argmax(1)], model.predict(Xt))
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= server.error_bound <= 1e-2
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.998


def test_single_queries_row_layout():
    model, server, client, public = deployed((32,))
    X, _ = digits()
    layers, _ = fold_mlp(model)
    for i in (1400, 1500, 1700):
        got = client.predict(X[i], lambda m: server.score(m, public), layout="row")
        assert np.abs(got - plain_logits(layers, X[i:i + 1])).max() <= server.error_bound


def test_column_and_row_layouts_agree():
    _, server, client, public = deployed((32, 16))
    X, _ = digits()
    send = functools.partial(lambda m: server.score(m, public))
    a = client.predict(X[1400:1460], send, layout="row")
    b = client.predict(X[1400:1460], send, layout="column")
    assert np.abs(a - b).max() <= 2 * server.error_bound


def test_pipeline_preprocessing_is_folded():
    model, server, client, public = deployed((32,), pipeline=True)
    X, _ = digits()
    Xt = X[1400:1500]
    got = client.predict(Xt, lambda m: server.score(m, public))
    assert (model.classes_[got.argmax(1)] == model.predict(Xt)).mean() >= 0.99


def test_hidden_values_are_permuted_and_scaled_per_query():
    """The client's view of round 1 is z = R*u*h[pi]/H[pi]: permuted, scaled, and fresh per query."""
    model, server, client, public = deployed((32,))
    X, _ = digits()
    x = X[1400:1401]
    views = []
    for _ in range(2):
        answer = server.score(client.encrypt(x), public)
        head = fm._ANSWER_HEADER
        tlen = head.unpack_from(answer)[-1]
        views.append(client._layers[0].decrypt(answer[head.size + tlen:], 1)[0])
    layers, _ = fold_mlp(model)
    h = x[0] @ layers[0][0].T + layers[0][1]
    assert np.all(np.abs(views[0]) <= 1.0 + server.error_bound)
    assert not np.allclose(views[0], views[1], atol=1e-3)
    # same multiset of signs (ReLU pattern preserved), values differ from h
    assert sorted(np.sign(np.round(views[0], 3))) == sorted(np.sign(np.round(h, 3)))
    assert not np.allclose(np.sort(views[0]), np.sort(h), atol=1e-2)


def test_per_query_weights_fold_the_secrets_and_stay_within_the_fit():
    """Each query's layer weights are the secrets folded into the model (``_effective``,
    quantised), differ between queries, and never exceed the worst case the plan fitted."""
    model, server, client, public = deployed((32, 16))
    p = server.plan
    R, sx, sw = float(server.params.x_bound), server.params.x_scale, server.params.w_scale
    seen = []
    for seed in (bytes(32), b"\x01" * 32, bytes(range(32))):
        for l, (W, b) in enumerate(p.layers):
            n_out, n_in = W.shape
            secrets_in = fm._layer_secrets(seed, l - 1, n_in, p.spread) if l else (None, None)
            secrets_out = fm._layer_secrets(seed, l, n_out, p.spread) if l < len(p.layers) - 1 else (None, None)
            Wq, bq = fm._effective(W, b, l, len(p.layers), p.bounds, R, *secrets_in, *secrets_out, p.out_scale)
            weights = server._weights(l, seed)
            assert np.abs(weights.wh - Wq * sw).max() <= 0.5 + 1e-6
            rows = secrets_out[0] if secrets_out[0] is not None else np.arange(n_out)
            cols = secrets_in[0] if secrets_in[0] is not None else np.arange(n_in)
            worst = server._servers[l]._weights.wh[rows][:, cols]  # the fitted case, same units
            assert np.all(np.abs(weights.wh) <= np.abs(worst))
            bias = np.empty_like(weights.bias)
            fk.bias_phases(np.rint(bq * sx * sw).astype(np.int64), server._ctx.delta_mod, server._ctx.primes_u64,
                           bias)
            assert np.array_equal(weights.bias, bias)
            if l == 0:
                seen.append(weights.wh.copy())
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])


def test_784_feature_network():
    from sklearn.neural_network import MLPClassifier

    X, y = digits()
    big = np.kron(X.reshape(-1, 8, 8), np.ones((4, 4)))[:, 2:30, 2:30].reshape(len(X), 784)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPClassifier((64,), max_iter=60, random_state=0).fit(big[:1400], y[:1400])
    layers, activation = fold_mlp(model)
    server = fm.MLPServer(layers, activation, fm.choose_params(layers, activation, min_samples=200), secret=SECRET)
    client = fm.MLPClient(server.sizes, activation, server.params)
    public = server.load_public(client.public_bundle())
    Xt = big[1400:1600]
    got = client.predict(Xt, lambda m: server.score(m, public))
    want = plain_logits(layers, Xt)
    assert np.abs(got - want).max() <= server.error_bound
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.998


# ------------------------------------------------------------------ model support


def test_identity_activation_and_regressor():
    from sklearn.neural_network import MLPRegressor

    X, y = digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(hidden_layer_sizes=(16,), activation="identity", max_iter=100, random_state=0).fit(X[:1400], y[:1400] / 9)
    layers, activation = fold_mlp(reg)
    assert activation == "identity"
    server = fm.MLPServer(layers, activation, secret=SECRET)
    client = fm.MLPClient(server.sizes, activation, server.params)
    public = server.load_public(client.public_bundle())
    got = client.predict(X[1400:1450], lambda m: server.score(m, public))
    assert np.abs(got[:, 0] - reg.predict(X[1400:1450])).max() <= server.error_bound


@pytest.mark.parametrize("activation", ["tanh", "logistic"])
def test_other_activations_refused(activation):
    model = trained((8,), activation)
    with pytest.raises(NotLinear, match=activation):
        fold_mlp(model)
    with pytest.raises(FastSchemeError, match="not supported"):
        fm.plan([(np.ones((2, 3)), np.zeros(2)), (np.ones((1, 2)), np.zeros(1))], activation)


# ------------------------------------------------------------------ bad input


def round2(server, client, public, x):
    """The round-2 message of a fresh query for ``x`` (as the client would send it)."""
    message, _ = client.respond(server.score(client.encrypt(x), public), len(x))
    return message


def split(message):
    magic, ver, rnd, tlen = struct.unpack_from("<4sBBH", message)
    return rnd, message[6 + 2: 8 + tlen], message[8 + tlen:]


def join(rnd, token, query):
    return struct.pack("<4sBBH", b"AIMQ", 1, rnd, len(token)) + token + query


def still_serves(server, client, public):
    X, _ = digits()
    got = client.predict(X[1400:1402], lambda m: server.score(m, public))
    assert got.shape == (2, 10)


def test_tampered_token_refused():
    _, server, client, public = deployed((32,))
    X, _ = digits()
    rnd, token, query = split(round2(server, client, public, X[1400:1401]))
    for pos in (0, 20, len(token) - 1):
        bad = bytearray(token)
        bad[pos] ^= 1
        with pytest.raises(fm.RoundError, match="authenticate"):
            server.score(join(rnd, bytes(bad), query), public)
    with pytest.raises(fm.RoundError, match="bytes"):
        server.score(join(rnd, token[:-1], query), public)
    still_serves(server, client, public)


def test_token_from_another_deployment_refused():
    model, server, client, public = deployed((32,))
    other = fm.MLPServer(server.plan.layers, "relu", server.params, secret=b"another-secret-of-32-bytes......")
    X, _ = digits()
    message = round2(other, client, other.load_public(client.public_bundle()), X[1400:1401])
    with pytest.raises(fm.RoundError, match="authenticate"):
        server.score(message, public)


def test_replayed_token_refused():
    _, server, client, public = deployed((32,))
    X, _ = digits()
    message = round2(server, client, public, X[1400:1401])
    server.score(message, public)
    with pytest.raises(fm.RoundError, match="replay"):
        server.score(message, public)
    still_serves(server, client, public)


def test_expired_token_refused():
    model, server, client, public = deployed((32,))
    now = [1000.0]
    timed = fm.MLPServer(server.plan.layers, "relu", server.params, secret=SECRET, token_ttl=30,
                         clock=lambda: now[0])
    X, _ = digits()
    message = round2(timed, client, public, X[1400:1401])
    now[0] += 31
    with pytest.raises(fm.RoundError, match="expired"):
        timed.score(message, public)
    now[0] -= 2  # within the lifetime, a fresh query works
    message = round2(timed, client, public, X[1400:1401])
    timed.score(message, public)


def test_round2_ciphertext_of_wrong_size_refused():
    _, server, client, public = deployed((32,))
    X, _ = digits()
    rnd, token, query = split(round2(server, client, public, X[1400:1401]))
    with pytest.raises(FastSchemeError, match="bytes"):
        server.score(join(rnd, token, query[:-4]), public)
    # a round-2 query for 64 inputs (the first layer's shape) instead of 32
    wrong = client._layers[0].encrypt(X[1400:1401])
    with pytest.raises(FastSchemeError, match="features"):
        server.score(join(rnd, token, wrong), public)
    # another sample count than the query started with
    two = client._layers[1].encrypt(np.zeros((2, 32)))
    with pytest.raises(fm.RoundError, match="samples"):
        server.score(join(rnd, token, two), public)
    # refused messages did not spend the token: the right one is answered, once
    answer = server.score(join(rnd, token, query), public)
    assert client.respond(answer, 1)[1].shape == (1, 10)
    still_serves(server, client, public)


def test_round_out_of_order_refused():
    _, server, client, public = deployed((32, 16))
    X, _ = digits()
    rnd, token, query = split(round2(server, client, public, X[1400:1401]))
    assert rnd == 2
    with pytest.raises(fm.RoundError, match="out of order"):
        server.score(join(3, token, client._layers[2].encrypt(np.zeros((1, 16)))), public)
    with pytest.raises(fm.RoundError, match="takes no token"):
        server.score(join(1, token, client._layers[0].encrypt(X[1400:1401])), public)
    with pytest.raises(fm.RoundError, match="needs the token"):
        server.score(join(2, b"", query), public)
    with pytest.raises(fm.RoundError, match="does not exist"):
        server.score(join(4, token, query), public)
    still_serves(server, client, public)


def test_token_bound_to_key():
    _, server, client, public = deployed((32,))
    X, _ = digits()
    message = round2(server, client, public, X[1400:1401])
    other = fm.MLPClient(server.sizes, "relu", server.params)
    with pytest.raises(FastSchemeError, match="another key|not for key"):
        server.score(message, server.load_public(other.public_bundle()))


def test_model_stage_refuses_tanh_and_folds_relu():
    from types import SimpleNamespace

    from aideploy.errors import ConfigError
    from aideploy.linear import mlp_layers
    from aideploy_scoring.model_sklearn import SklearnModel

    tanh = SimpleNamespace(adapter=SklearnModel(trained((8,), "tanh")), name="mlp", version="1")
    with pytest.raises(ConfigError, match="tanh") as info:
        mlp_layers(tanh, "fast")
    assert "\n" not in str(info.value)
    relu = SimpleNamespace(adapter=SklearnModel(trained((8,), "relu")), name="mlp", version="1")
    layers, activation = mlp_layers(relu, "fast")
    assert activation == "relu" and [W.shape for W, _ in layers] == [(8, 64), (10, 8)]
    assert mlp_layers(relu, "seal") is None  # seal: "needs a linear model" says it


# every built-in target provisions the shared secret; a third-party one that declares nothing does not
@pytest.mark.parametrize("target,refused", [("local", False), ("managed_endpoint", False), ("aci", False),
                                            ("k8s", True)])
def test_mlps_are_deployed_only_where_workers_share_the_token_secret(target, refused):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aideploy.errors import ConfigError
    from aideploy.manager import PluginRegistry
    from aideploy.stages import Mode
    from aideploy_plugins.encryption_fast import aideploy_check_model
    from aideploy_scoring.model_sklearn import SklearnModel

    from aideploy.artifacts import Dataset

    cfg = OmegaConf.create({"encryption": {"plugin": "fast", "x_bound": None, "max_error": 1e-2, "batch_size": 1,
                                           "max_samples_per_query": 1}, "target": {"plugin": target},
                            "predict": {"batch_size": None}})
    model = SimpleNamespace(adapter=SklearnModel(trained((8,))), name="mlp", version="1")
    dataset = Dataset("digits", digits()[0][:10])
    plugins = PluginRegistry.load([])  # the targets declare whether they serve MLPs
    for mode in (Mode.run, Mode.predict):
        ctx = SimpleNamespace(cfg=cfg, mode=mode, plugins=plugins, artifacts={})
        if refused and mode is not Mode.predict:
            with pytest.raises(ConfigError, match="shared secret"):
                aideploy_check_model(ctx=ctx, model=model, dataset=dataset)
        else:
            aideploy_check_model(ctx=ctx, model=model, dataset=dataset)


def test_workers_sharing_the_environment_secret_serve_each_others_rounds(monkeypatch):
    """Two FastMLPSchemes built as two workers' init() builds them (secret from the environment):
    round 1 on one, round 2 on the other. A worker with another secret refuses the token."""
    import os

    from aideploy_scoring.encrypted import TOKEN_SECRET_ENV, FastMLPScheme

    layers, activation = fold_mlp(trained((16,)))
    monkeypatch.setenv(TOKEN_SECRET_ENV, os.urandom(32).hex())
    one, two = FastMLPScheme(layers, activation, None), FastMLPScheme(layers, activation, None)
    monkeypatch.setenv(TOKEN_SECRET_ENV, os.urandom(32).hex())
    other = FastMLPScheme(layers, activation, None)
    client = fm.MLPClient([64, 16, 10], activation, one.params)  # as a client reads them from GET /score
    assert one.ranges == one.ranges.uniform(64, 1.0)  # no x_bound set: [-1, 1], so X goes as it is
    bundle = client.public_bundle()
    X, _ = digits()
    message, _ = client.respond(one._load(bundle)[0].score(client.encrypt(X[:2]), one._load(bundle)[1]), 2)
    server, public = other._load(bundle)
    with pytest.raises(fm.RoundError, match="does not authenticate"):
        server.score(message, public)
    server, public = two._load(bundle)
    _, logits = client.respond(server.score(message, public), 2)
    assert (logits.argmax(1) == plain_logits(layers, X[:2]).argmax(1)).all()


def test_query_budget_counts_samples_per_key():
    from aideploy_scoring.encrypted import QueryBudget
    from aideploy_scoring.service import RequestError

    budget = QueryBudget(10)
    budget.spend("a", 6)
    budget.spend("b", 10)
    with pytest.raises(RequestError, match="max_queries_per_key") as info:
        budget.spend("a", 5)
    assert info.value.status == 429
    budget.refund("a", 6)  # a refused round 1 does not count
    budget.spend("a", 10)
    QueryBudget(0).spend("a", 10 ** 9)  # 0: unlimited


def test_a_query_over_max_samples_per_query_is_a_400_and_costs_nothing():
    from aideploy_scoring.encrypted import QueryBudget
    from aideploy_scoring.service import RequestError

    budget = QueryBudget(10, per_query=1)
    with pytest.raises(RequestError, match="max_samples_per_query") as info:
        budget.spend("a", 2)
    assert info.value.status == 400 and "batch_size=1" in str(info.value)
    for _ in range(10):
        budget.spend("a", 1)  # the refused query spent none of the key's 10
    QueryBudget(0, per_query=0).spend("a", 10 ** 6)


def test_a_batch_over_max_samples_per_query_fails_at_the_model_stage():
    """An MLP's queries hold one sample unless the service says otherwise; a linear model's as
    many as the flooding covers (``max_samples_per_query`` is the MLPs' setting)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aideploy.artifacts import Dataset
    from aideploy.errors import ConfigError
    from aideploy.manager import PluginRegistry
    from aideploy.stages import Mode
    from aideploy_plugins.encryption_fast import aideploy_check_model
    from aideploy_scoring.model_sklearn import SklearnModel

    plugins = PluginRegistry.load([])  # the target declares whether it serves MLPs

    def check(model, batch_size, **settings):
        cfg = OmegaConf.create({"encryption": {"plugin": "fast", "x_bound": None, "max_error": 1e-2,
                                               "batch_size": None, "max_samples_per_query": 1, **settings},
                                "target": {"plugin": "local"}, "predict": {"batch_size": batch_size}})
        aideploy_check_model(ctx=SimpleNamespace(cfg=cfg, mode=Mode.run, artifacts={}, plugins=plugins),
                             dataset=Dataset("digits", digits()[0][:10]),
                             model=SimpleNamespace(adapter=SklearnModel(model), name="m", version="1"))

    mlp = trained((8,))
    with pytest.raises(ConfigError, match="batch_size=4 is over the 1 samples") as info:
        check(mlp, 4)
    assert "max_samples_per_query" in info.value.hint
    check(mlp, 1)
    check(mlp, 4, max_samples_per_query=4)
    from sklearn.linear_model import LogisticRegression

    X, y = digits()
    check(LogisticRegression(max_iter=500).fit(X[:500], y[:500]), 64)  # 1 is the MLPs' limit
