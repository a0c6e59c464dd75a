"""The fast scheme's per-feature input ranges (scoring/inputranges.py): how they are chosen, that
the folded model gives the same logits, that keys are bound to them, that a model on raw
features (breast_cancer's, areas in the thousands beside smoothness below 0.25) is served at the
default ``max_error`` where one bound for every feature is not, and that a value outside its
range is refused with one line naming its column: before deploy, before any key is sent to a
described service, and chunk by chunk for the rest of a file.
"""

from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import results_of
from omegaconf import OmegaConf

from aideploy.artifacts import Dataset, KeySession, ServiceInfo
from aideploy.errors import ConfigError
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.encrypted import fast_linear_server, fast_mlp_plan
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError
from aideploy_scoring.inputranges import InputRanges, OutOfRange, choose, for_model
from aideploy_scoring.linearize import fold, fold_mlp
from aideploy_scoring.model_sklearn import SklearnModel
from aideploy_scoring.service import LinearModel, ScoringService


@pytest.fixture(scope="module")
def cancer():
    """breast_cancer's raw features (a DataFrame: its column names), split as a user would."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer(as_frame=True)
    return train_test_split(data.data, data.target, test_size=0.25, random_state=0)


@pytest.fixture(scope="module")
def pipeline(cancer):
    """The issue's model: Pipeline(StandardScaler(), PCA(20), LogisticRegression()), fitted on arrays."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, _, y_train, _ = cancer
    return make_pipeline(StandardScaler(), PCA(20), LogisticRegression()).fit(X_train.to_numpy(), y_train)


# ----------------------------------------------------------------------------- choosing them


def test_ranges_cover_the_data_with_a_margin_and_constant_features_get_the_typical_width():
    from sklearn.linear_model import LinearRegression

    X = np.array([[0.0, 3.0, 1.0], [10.0, 3.0, 2.0], [4.0, 3.0, 1.5]])
    ranges = choose(LinearRegression().fit(X, X[:, 0]), 3, [X], ["a", "b", "c"], "rows.csv")
    # observed [0, 10] and [1, 2]: the half-width doubled around the centre; the constant column
    # gets the median observed half-width (2.75), doubled
    assert ranges.low == (-5.0, -2.5, 0.5) and ranges.high == (15.0, 8.5, 2.5)
    assert ranges.names == ("a", "b", "c") and ranges.source == "the data (rows.csv)"


def test_ranges_are_rounded_outward_to_three_digits_of_their_width():
    from sklearn.linear_model import LinearRegression

    X = np.array([[0.1234567], [0.2345678]])
    ranges = choose(LinearRegression().fit(X, X[:, 0]), 1, [X])
    assert ranges.low == (0.067,) and ranges.high == (0.291,)
    assert ranges.low[0] <= 0.1234567 - 0.1111111 / 2 and ranges.high[0] >= 0.2345678 + 0.1111111 / 2


@pytest.mark.parametrize("step", ["standard", "minmax", "maxabs", "pca"])
def test_a_models_own_statistics_count_as_observed(step):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal([100.0, -3.0, 0.01], [20.0, 1.0, 0.002], (500, 3))
    first = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "maxabs": MaxAbsScaler(),
             "pca": PCA(3)}[step]
    model = make_pipeline(first, LogisticRegression()).fit(X, X[:, 0] > 100)
    ranges = choose(model, 3, [])  # no data: the model's statistics alone
    assert ranges.source == "the model's statistics"
    low, high = {"standard": (X.mean(0) - 4 * X.std(0), X.mean(0) + 4 * X.std(0)),
                 "minmax": (X.min(0), X.max(0)),
                 "maxabs": (-np.abs(X).max(0), np.abs(X).max(0)),
                 "pca": (X.mean(0) - 4 * X.std(0, ddof=1), X.mean(0) + 4 * X.std(0, ddof=1))}[step]
    centre, half = (low + high) / 2, (high - low) / 2
    # the margin doubles the half-width; the rounding moves each end out by under 1% of the width
    assert (np.abs(ranges.center - centre) <= 1e-2 * 4 * half).all()
    np.testing.assert_allclose(ranges.half, 2 * half, rtol=1e-2)
    assert choose(LogisticRegression().fit(X, X[:, 0] > 100), 3, []).source.startswith("default [-1, 1]")


def test_folded_weights_give_the_same_logits_and_values_outside_are_refused_by_name():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    ranges = InputRanges((-1.0, 0.0, 100.0, -5.0), (1.0, 0.5, 3000.0, 5.0), ("a", "b", "area", "d"))
    X = np.column_stack([rng.uniform(lo, hi, 6) for lo, hi in zip(ranges.low, ranges.high)])
    Wf, bf = ranges.fold(W, b)
    Z = ranges.normalize(X)
    assert np.abs(Z).max() <= 1.0
    np.testing.assert_allclose(Z @ Wf.T + bf, X @ W.T + b, rtol=1e-12, atol=1e-12)
    X[4, 2] = 3000.5
    with pytest.raises(OutOfRange, match=r"^row 14, column 'area' is 3000.5, outside its range \[100, 3000\]$"):
        ranges.normalize(X, first_row=10)


def test_the_ranges_survive_json_and_keys_are_bound_to_them():
    """The digest is one of the parameters: a key made for other ranges is refused like one for
    other parameters, never answered with the other ranges' arithmetic."""
    import json

    rng = np.random.default_rng(1)
    model = LinearModel(rng.normal(size=(2, 3)), rng.normal(size=2))
    ranges = InputRanges((0.0, 0.0, 0.0), (1.0, 2.0, 3.0), None, "test")
    assert InputRanges.from_json(json.loads(json.dumps(ranges.to_json()))).digest() == ranges.digest()
    server = fast_linear_server(model, ranges, 1e-3)
    assert server.params.input_ranges == ranges.digest()
    wider = InputRanges((0.0, 0.0, 0.0), (1.0, 2.0, 3.5))
    other = FastClient(3, 2, fast_linear_server(model, wider, 1e-3).params)
    with pytest.raises(FastSchemeError, match="input_ranges"):
        server.load_public(other.public_bundle())
    for bad in (dict(input_ranges="xyz"), dict(input_ranges=ranges.digest(), x_bound=2.0)):
        with pytest.raises(FastSchemeError, match="input_ranges|x_bound"):
            FastParams(**bad)


# ----------------------------------------------------------------------------- raw features


def test_one_bound_cannot_serve_the_raw_pipeline_and_per_feature_ranges_can(cancer, pipeline):
    """The issue's model, encrypted in process: with one bound for every feature (its widest,
    4254) no scales meet max_error=1e-3; with each feature's range they do, and every test row's
    class is the plaintext pipeline's."""
    X_train, X_test, _, _ = cancer
    model = LinearModel(*fold(pipeline))
    with pytest.raises(FastSchemeError, match="quantisation error"):
        fast_linear_server(model, InputRanges.uniform(30, float(X_test.to_numpy().max())), 1e-3)
    ranges = choose(pipeline, 30, [X_test.to_numpy()], list(X_test.columns), "test")
    server = fast_linear_server(model, ranges, 1e-3)
    client = FastClient(30, 1, server.params)
    public = server.load_public(client.public_bundle())
    X = X_test.to_numpy()
    scores = np.vstack([client.decrypt(server.predict(client.encrypt(ranges.normalize(X[i:i + 16])), public),
                                       len(X[i:i + 16])) for i in range(0, len(X), 16)])
    expected = pipeline.decision_function(X)
    assert np.abs(scores[:, 0] - expected).max() <= server.error_bound <= 1e-3
    assert ((scores[:, 0] > 0) == (expected > 0)).all()


def test_an_mlp_on_raw_features_gets_a_scale_per_first_layer_input(cancer):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = cancer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=300, random_state=0))
        mlp.fit(X_train.to_numpy(), y_train)
    layers, activation = fold_mlp(mlp)
    X = X_test.to_numpy()
    with pytest.raises(FastSchemeError, match="no parameters serve this network"):
        fast_mlp_plan(layers, activation, InputRanges.uniform(30, float(X.max())), 1e-3, 1)
    ranges = choose(mlp, 30, [X_train.to_numpy(), X])
    plan = fast_mlp_plan(layers, activation, ranges, 1e-3, 1)
    server = fm.MLPServer(plan.layers, activation, plan.params)
    client = fm.MLPClient(server.sizes, activation, plan.params)
    public = server.load_public(client.public_bundle())
    rows = X[:8]
    logits = np.vstack([client.predict(ranges.normalize(row[None]), lambda m: server.score(m, public))
                        for row in rows])
    expected = rows  # the logits of the network as fitted (on raw rows), in plaintext
    for W, b in layers[:-1]:
        expected = np.maximum(expected @ W.T + b, 0.0)
    expected = expected @ layers[-1][0].T + layers[-1][1]
    assert np.abs(logits - expected).max() <= server.error_bound <= 1e-3


# ----------------------------------------------------------------------------- one source of truth


def test_the_ranges_are_recorded_at_the_model_stage_and_the_service_serves_those(tmp_path):
    """Captured with the schema from the data through the client part (a ColumnTransformer's
    outputs, named), read back by the service from the version's file, published with the
    parameters; encryption.x_bound replaces them by one range, with the same names."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from aideploy.schemas import capture
    from aideploy_scoring.models import load_dir
    from aideploy_scoring.schema import Schema

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"city": rng.choice(["a", "b"], 200), "income": rng.normal(50, 10, 200)})
    model = Pipeline([("pre", ColumnTransformer([("cat", OneHotEncoder(), ["city"]),
                                                ("num", StandardScaler(), ["income"])])),
                      ("lr", LogisticRegression())]).fit(frame, frame.income > 50)
    adapter = SklearnModel(model)
    schema = capture(adapter, Dataset("rows.csv", frame))
    recorded = InputRanges.from_json(schema.ranges)
    assert recorded.names == ("cat__city_a", "cat__city_b", "num__income")
    assert recorded.low[:2] == (-0.5, -0.5) and recorded.high[:2] == (1.5, 1.5)  # one-hot: [0, 1], margin
    joblib.dump(model, tmp_path / "model.pkl")
    schema.save(tmp_path)
    assert Schema.load(tmp_path) == schema
    served = load_dir(tmp_path)
    assert for_model(served, 3) == recorded
    service = ScoringService(served)
    service._register_encrypted_schemes()
    status, info = service.handle_http("GET", {}, io.BytesIO(b""), 0)
    assert status == 200 and InputRanges.from_json(info["fast"]["input_ranges"]) == recorded
    assert info["fast"]["params"]["input_ranges"] == recorded.digest() and "ranges" not in info["input"]
    assert for_model(served, 3, x_bound=5.0) == InputRanges.uniform(3, 5.0, recorded.names)


# ----------------------------------------------------------------------------- out-of-range rows


def _fast_cfg(**encryption):
    return OmegaConf.create({"encryption": {"plugin": "fast", "x_bound": None, "max_error": 1e-3,
                                            "max_samples_per_query": 1, **encryption},
                             "predict": {"batch_size": None}, "scoring_uri": "http://service/score"})


def test_rows_after_a_files_first_are_checked_as_they_are_encrypted():
    """A file is not scanned in full before deploy: a later chunk's value outside its range stops
    the run as it is encrypted, one line naming the file, the row in the whole file and the column."""
    from aideploy_plugins.encryption_fast import FastKeys, aideploy_encrypt

    ranges = InputRanges((0.0, 0.0), (1.0, 10.0), ("a", "b"), "the data (rows.csv)")
    client = FastClient(2, 1, fast_linear_server(LinearModel(np.ones((1, 2))), ranges, 1e-3).params)
    keys = KeySession("fast", client.key_id, 0, FastKeys(client, ranges), {"key_id": client.key_id})
    ctx = SimpleNamespace(cfg=_fast_cfg(), artifacts={}, batch_size=1)
    chunk = Dataset("rows.csv", np.array([[0.5, 5.0], [0.5, 12.5]]), first_row=4096)
    with pytest.raises(ConfigError) as info:
        aideploy_encrypt(ctx=ctx, keys=keys, dataset=chunk)
    assert info.value.cause == \
        "encryption=fast: data 'rows.csv': row 4097, column 'b' is 12.5, outside its range [0, 10]"
    assert "first 1000 rows" in info.value.hint and "encryption.x_bound" in info.value.hint
    good = aideploy_encrypt(ctx=ctx, keys=keys, dataset=Dataset("rows.csv", np.array([[0.5, 5.0]])))
    assert len(good.items) == 1


def test_chunks_know_their_first_row_in_the_whole_data(tmp_path):
    """What the encrypt stage's message numbers a row by, for rows in memory and a file's chunks."""
    from aideploy.datafiles import CsvRows

    assert [c.first_row for c in Dataset("x", np.zeros((10, 2))).chunks(4)] == [0, 4, 8]
    pd.DataFrame({"a": range(10), "b": range(10)}).to_csv(tmp_path / "rows.csv", index=False)
    rows = Dataset("rows.csv", rows=CsvRows(tmp_path / "rows.csv", None, None, header=None, delimiter=","))
    assert [(c.first_row, int(c.X_test[0, 0])) for c in rows.chunks(4, start=2)] == [(2, 2), (6, 6)]


def test_a_described_service_refuses_rows_outside_its_ranges_before_any_key_is_published(cancer, pipeline):
    """mode=predict without the model: the ranges are the service's (GET /score), and the rows in
    memory are checked against them at the keys stage, before the key is uploaded (this context
    has no key store: reaching the upload would fail otherwise)."""
    from aideploy.schemas import capture
    from aideploy_plugins.encryption_fast import aideploy_setup_keys

    _, X_test, _, _ = cancer
    adapter = SklearnModel(pipeline)
    adapter.use_schema(capture(adapter, Dataset("test.csv", X_test.to_numpy(), feature_names=list(X_test.columns))))
    service = ScoringService(adapter)
    service._register_encrypted_schemes()
    info = ServiceInfo.from_json(service.handle_http("GET", {}, io.BytesIO(b""), 0)[1])
    rows = X_test.to_numpy().copy()
    rows[7, 3] = 40_000.0  # "mean area" in the wrong unit
    dataset = Dataset("rows.csv", rows, schema=info.schema)
    ctx = SimpleNamespace(cfg=_fast_cfg(), artifacts={"dataset": dataset, "service": info})
    with pytest.raises(ConfigError) as error:
        aideploy_setup_keys(cfg=ctx.cfg.encryption, ctx=ctx, model=None, service=info)
    assert error.value.cause.startswith("encryption=fast: data 'rows.csv': row 7, column 'mean area' is 40000, outside")
    assert "the service at http://service/score took its ranges from the model's statistics and the data (test.csv)" \
        in error.value.hint


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def cancer_files(cancer, pipeline, tmp_path):
    _, X_test, _, y_test = cancer
    joblib.dump(pipeline, tmp_path / "model.pkl")
    X_test.assign(target=y_test).to_csv(tmp_path / "test.csv", index=False)
    run = ("data=csv", f"data.path={tmp_path / 'test.csv'}", "data.label_column=target", "model=sklearn_pickle",
           f"model.path={tmp_path / 'model.pkl'}", "encryption=fast")
    return tmp_path, run


def test_the_raw_feature_pipeline_runs_encrypted_with_the_default_settings(cli, cancer_files):
    """The issue's run: raw breast_cancer features, encryption=fast and nothing else set."""
    _, run = cancer_files
    proc = cli(*run)
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["n_samples"] == 143 and results["agreement"] == 1.0
    assert results["max_score_error"] <= 1e-3


def test_an_out_of_range_csv_fails_before_deploy_naming_the_column(cli, cancer_files):
    """With one range for every feature (encryption.x_bound, the issue's first attempt), the raw
    CSV is refused at the model stage, before anything is deployed, naming the column and range."""
    _, run = cancer_files
    proc = cli(*run, "encryption.x_bound=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: encryption=fast: data 'test.csv': row 0, column 'mean radius' is 13.4, outside its range " \
        "[-1, 1]" in proc.stderr
    assert "hint: raise encryption.x_bound, or leave it unset" in proc.stderr
    assert set(results_of(proc.out)["stage_seconds"]) == {"data", "model", "teardown"}
