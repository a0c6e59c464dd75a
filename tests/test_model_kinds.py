"""Model kinds: scikit-learn estimators and Pipelines, ONNX, MLflow, and your own score.py.

The in-process tests drive the same adapters and ScoringService the real server runs; the
end-to-end ones go through the ``aideploy`` command and the real azmlinfsrv.
"""

from __future__ import annotations

import io
import json
import textwrap
import warnings

import joblib
import numpy as np
import pytest
import requests

from conftest import SERVE_KEY, results_of, served
from aideploy.datasets import diabetes_split, digits_split
from aideploy_scoring import models
from aideploy_scoring.fastlinear import FastClient, FastSchemeError, FastServer, choose_params
from aideploy_scoring.linearize import fold
from aideploy_scoring.models import NotLinear
from aideploy_scoring.service import RequestError, ScoringService


@pytest.fixture(scope="module")
def digits():
    return digits_split(0.25, 0)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, digits):
    """One file per kind and shape of model the tests deploy, trained on digits (or diabetes)."""
    import mlflow.sklearn
    from skl2onnx import to_onnx
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X_train, _, y_train, _ = digits
    folder = tmp_path_factory.mktemp("models")
    estimators = {
        "forest": RandomForestClassifier(30, random_state=0),
        "mlp": MLPClassifier((32,), max_iter=400, random_state=0),
        "svc": SVC(),
        "std_lr": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        "pca_lr": make_pipeline(PCA(24, whiten=True, random_state=0), LogisticRegression(max_iter=3000)),
    }
    files = {}
    for name, estimator in estimators.items():
        files[name] = folder / f"{name}.pkl"
        with warnings.catch_warnings():  # the small MLP stops before it converges: fine for serving tests
            warnings.simplefilter("ignore")
            joblib.dump(estimator.fit(X_train, y_train), files[name])
    D_train, _, d_train, _ = diabetes_split(0.25, 0)
    files["ridge"] = folder / "ridge.joblib"
    joblib.dump(Ridge().fit(D_train, d_train), files["ridge"])
    lr = LogisticRegression(max_iter=3000).fit(X_train, y_train)
    files["lr"] = folder / "lr.pkl"
    joblib.dump(lr, files["lr"])
    files["onnx"] = folder / "lr.onnx"
    files["onnx"].write_bytes(to_onnx(lr, X_train[:1].astype(np.float32)).SerializeToString())
    files["mlflow"] = folder / "mlflow_lr"
    mlflow.sklearn.save_model(lr, str(files["mlflow"]), input_example=X_train[:2])
    return files


# ----------------------------------------------------------------------------- folding


def _affine_pipelines():
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, MinMaxScaler, StandardScaler
    from sklearn.svm import LinearSVC

    return [
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        make_pipeline(StandardScaler(with_mean=False), MinMaxScaler(), LinearSVC()),
        make_pipeline(MaxAbsScaler(), PCA(10), SGDClassifier(random_state=0)),
        make_pipeline(PCA(12, whiten=True, random_state=0), "passthrough", LogisticRegression(max_iter=2000)),
        Pipeline([("inner", make_pipeline(StandardScaler(), TruncatedSVD(8, random_state=0))),
                  ("id", FunctionTransformer()), ("lr", LogisticRegression(max_iter=2000))]),
        make_pipeline(StandardScaler(), PCA(5), LinearRegression()),
    ]


@pytest.mark.parametrize("index", range(6))
def test_affine_pipelines_fold_to_one_map(index, digits):
    X_train, X_test, y_train, _ = digits
    pipeline = _affine_pipelines()[index]
    from sklearn.base import is_classifier

    target = y_train if is_classifier(pipeline) else y_train.astype(float)
    pipeline.fit(X_train, target)
    W, b = fold(pipeline)
    expected = (pipeline.decision_function(X_test) if hasattr(pipeline, "decision_function")
                else pipeline.predict(X_test))
    assert np.allclose(X_test @ W.T + b, np.asarray(expected).reshape(len(X_test), -1), atol=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_what_cannot_fold_is_named(digits):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, PoissonRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, PolynomialFeatures, StandardScaler

    X_train, y_train = digits[0][:300], digits[2][:300]
    cases = {
        "step 'polynomialfeatures'": make_pipeline(StandardScaler(), PolynomialFeatures(2),
                                                   LogisticRegression(max_iter=20)),
        "clip": make_pipeline(MinMaxScaler(clip=True), LogisticRegression(max_iter=20)),
        "RandomForestClassifier is not a linear model": RandomForestClassifier(3),
        "PoissonRegressor is not a linear model": PoissonRegressor(),  # has coef_, but exp(Xw + b)
    }
    for needle, estimator in cases.items():
        estimator.fit(X_train, y_train)
        with pytest.raises(NotLinear, match=needle):
            fold(estimator)


# ----------------------------------------------------------------------------- the fast scheme's scales


def test_fast_scales_are_chosen_from_the_model():
    rng = np.random.default_rng(1)
    W = rng.normal(0, 8, (10, 64))  # ||w||_1 ~ 400: beyond the default scales' 128
    b = rng.normal(0, 3, 10)
    with pytest.raises(FastSchemeError, match="logits can reach"):
        FastServer(W, b)
    params = choose_params(W, b)
    server = FastServer(W, b, params)
    assert server.error_bound <= 1e-3
    client = FastClient(64, 10, params)
    X = rng.uniform(-1, 1, (5, 64))
    answer = server.predict(client.encrypt(X), server.load_public(client.public_bundle()))
    assert np.max(np.abs(client.decrypt(answer, 5) - (X @ W.T + b))) <= server.error_bound


def test_an_unservable_model_is_refused_with_the_reason():
    with pytest.raises(FastSchemeError, match="no fixed-point scales"):
        choose_params(np.full((2, 64), 1e9), np.zeros(2))
    # deterministic: a client with the model computes what the service serves
    assert choose_params(np.ones((2, 64)) * 0.01, np.zeros(2)) == choose_params(np.ones((2, 64)) * 0.01, 0.0)


# ----------------------------------------------------------------------------- the service, in process


def _service(path) -> ScoringService:
    kind = models.guess_kind(path)
    return ScoringService(models.load(path, kind))


@pytest.mark.parametrize("name", ["forest", "svc", "onnx", "mlflow"])
def test_each_kind_answers_the_plain_protocol_and_refuses_a_wrong_shape(name, model_files, digits):
    service = _service(model_files[name])
    X = digits[1][:4]
    answer = service.handle(json.dumps({"data": X.tolist()}).encode())
    assert len(answer["predictions"]) == 4
    assert ("probabilities" in answer) == (name != "svc")  # SVC without probability=True has none
    with pytest.raises(RequestError, match="64 features"):
        service.handle(json.dumps({"data": [[0.0] * 10]}).encode())
    with pytest.raises(RequestError):
        service.handle(json.dumps({"data": [["a"] * 64]}).encode())


def test_a_nonlinear_model_refuses_encrypted_requests(model_files):
    service = _service(model_files["forest"])
    service._register_encrypted_schemes()
    with pytest.raises(RequestError, match="cannot be served encrypted.*RandomForestClassifier"):
        service.scheme("fast")


def test_the_kind_comes_from_the_record_or_the_files(tmp_path, model_files):
    from aideploy.registry import LocalRegistry

    version = LocalRegistry(tmp_path / "reg").register("m", model_files["mlflow"], "mlflow")
    assert models.detect(version.path) == ("mlflow", version.path / "mlflow_lr")
    assert models.detect(model_files["mlflow"]) == ("mlflow", model_files["mlflow"])  # MLmodel, no record
    again = LocalRegistry(tmp_path / "reg").register("m", model_files["mlflow"], "mlflow")
    assert again.version == version.version  # same content: same version
    (tmp_path / "two").mkdir()
    for name in ("a.pkl", "b.pkl"):
        (tmp_path / "two" / name).write_bytes(b"x")
    with pytest.raises(models.ModelLoadError, match="expected one sklearn model"):
        models.detect(tmp_path / "two")


# ----------------------------------------------------------------------------- bad model files


def test_corrupt_and_mismatched_model_files_fail_at_the_model_stage(cli, tmp_path, model_files):
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04 not a pickle")
    (tmp_path / "broken.onnx").write_bytes(b"garbage")
    (tmp_path / "broken_mlflow").mkdir()
    (tmp_path / "broken_mlflow" / "MLmodel").write_text("flavors: {python_function: {loader_module: nope}}\n")
    cases = [
        (["model=sklearn_pickle", f"model.path={tmp_path / 'broken.pkl'}"], "cannot unpickle"),
        (["model=onnx", f"model.path={tmp_path / 'broken.onnx'}"], "cannot load broken.onnx as ONNX"),
        (["model=mlflow", f"model.path={tmp_path / 'broken_mlflow'}"], "as an MLflow model"),
        (["model=onnx", f"model.path={model_files['lr']}"], "use model=sklearn_pickle"),
        (["model=mlflow", f"model.path={model_files['onnx']}"], "is not a directory"),
    ]
    for overrides, needle in cases:
        proc = cli(*overrides)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert len(lines) == 2 and needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "deploy" not in results_of(proc.out)["stage_seconds"]


def test_a_nonlinear_model_is_refused_for_encryption_before_deploying(cli, model_files):
    proc = cli("model=sklearn_pickle", f"model.path={model_files['mlp']}", "encryption=seal")
    assert proc.returncode == 2
    assert "encryption=seal cannot serve sklearn_model:1" in proc.stderr and "MLPClassifier" in proc.stderr
    assert set(results_of(proc.out)["stage_seconds"]) == {"data", "model", "teardown"}
    # what is served is named, and the refused model was not registered (nor left staged)
    hint = proc.stderr.split("hint: ")[1]
    assert "linear models" in hint and "client runs" in hint
    forest = cli("model=sklearn_pickle", f"model.path={model_files['forest']}", "encryption=fast")
    assert forest.returncode == 2 and "ReLU MLPs" in forest.stderr.split("hint: ")[1]
    assert not (cli.home / "models" / "sklearn_model").exists() or \
        not list((cli.home / "models" / "sklearn_model").iterdir())


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["forest", "mlp", "svc", "std_lr"])
def test_sklearn_classifiers_end_to_end(cli, model_files, name):
    proc = cli("model=sklearn_pickle", f"model.path={model_files[name]}", "data.limit=80",
               "encryption.batch_size=16")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["task"] == "classification" and results["n_samples"] == 80
    assert results["agreement"] == 1.0 and results["accuracy"] >= 0.85


def test_ridge_regressor_end_to_end_on_diabetes(cli, model_files):
    proc = cli("data=diabetes", "model=sklearn_pickle", f"model.path={model_files['ridge']}")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["task"] == "regression" and "accuracy" not in results
    assert results["max_abs_diff"] < 1e-9
    assert results["rmse"] == pytest.approx(results["plaintext_rmse"]) and 0.2 < results["r2"] < 0.8
    assert "rmse" in proc.stderr and "r2" in proc.stderr


def test_mlflow_model_end_to_end_with_its_runtime_in_the_spec(cli, model_files):
    proc = cli("model=mlflow", f"model.path={model_files['mlflow']}", "data.limit=60")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_probability_error"] < 1e-12
    spec = (proc.out / "environment.yml").read_text()
    assert "mlflow-skinny" in spec and "onnxruntime" not in spec
    assert (cli.home / "models" / "mlflow_model" / "1" / "mlflow_lr" / "MLmodel").exists()


def test_onnx_model_served_matches_scikit_learn(cli, model_files, digits):
    _, X_test, _, _ = digits
    lr = joblib.load(model_files["lr"])
    with served(cli, "model=onnx", f"model.path={model_files['onnx']}") as uri:
        answer = requests.post(uri, json={"data": X_test.tolist()}, timeout=60,
                               headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()
        wrong = requests.post(uri, json={"data": [[0.0] * 63]}, timeout=60,
                              headers={"Authorization": f"Bearer {SERVE_KEY}"})
    assert np.mean(np.asarray(answer["predictions"]) == lr.predict(X_test)) >= 0.99
    assert np.max(np.abs(np.asarray(answer["probabilities"]) - lr.predict_proba(X_test))) <= 1e-4
    assert wrong.status_code == 400 and "64 features" in wrong.json()["error"]
    spec_files = list(cli.tmp_path.glob("run*/environment.yml"))
    assert spec_files and "onnxruntime" in spec_files[0].read_text()


@pytest.mark.parametrize("scheme,name", [("fast", "std_lr"), ("fast", "pca_lr"), ("seal", "std_lr"),
                                         ("seal", "pca_lr")])
def test_folded_pipelines_under_encryption(cli, model_files, scheme, name):
    limit = "data.limit=6" if scheme == "seal" else "data.limit=120"  # seal: ~1.4 s per sample
    proc = cli("model=sklearn_pickle", f"model.path={model_files[name]}", f"encryption={scheme}", limit)
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0
    assert results["max_score_error"] < (1e-3 if scheme == "fast" else 1e-4)


def test_encrypted_regressor_under_fast(cli, model_files):
    proc = cli("data=diabetes", "model=sklearn_pickle", f"model.path={model_files['ridge']}", "encryption=fast",
               "encryption.batch_size=50")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["task"] == "regression" and results["max_abs_diff"] < 1e-3


SEED_STYLE_SCORE = '''
    import json
    import os

    import joblib
    import numpy as np


    def init():
        global model
        model = joblib.load(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "sklearn_mnist_model.pkl"))


    def run(raw_data):
        data = np.array(json.loads(raw_data)["data"])
        return model.predict(data).tolist()
'''


def test_custom_seed_style_score_py(cli, tmp_path, model_files):
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text(textwrap.dedent(SEED_STYLE_SCORE))
    model = tmp_path / "sklearn_mnist_model.pkl"
    model.write_bytes(model_files["lr"].read_bytes())
    proc = cli("model=sklearn_pickle", f"model.path={model}", "scoring=custom", f"scoring.source_dir={src}",
               "data.limit=50")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["options"]["scoring"] == "custom"
    assert results["agreement"] == 1.0 and results["accuracy"] >= 0.9
    assert (proc.out / "deploy" / "source" / "score.py").exists()


def test_custom_script_with_an_unknown_answer_is_recorded_not_scored(cli, tmp_path):
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "main.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return {'verdict': 'yes'}\n")
    proc = cli("scoring=custom", f"scoring.source_dir={src}", "scoring.entry_script=app/main.py", "data.limit=3")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert "could not be computed" in results["evaluation"] and "accuracy" not in results
    assert "verdict" in results["answers_sample"][0]


def test_custom_scoring_refuses_encryption_and_a_missing_script(cli, tmp_path):
    proc = cli("scoring=custom", f"scoring.source_dir={tmp_path}", "encryption=fast")
    assert proc.returncode == 2 and "scoring=custom serves plain requests" in proc.stderr
    proc = cli("scoring=custom", f"scoring.source_dir={tmp_path}")
    assert proc.returncode == 2 and "is not a file inside" in proc.stderr and "hint:" in proc.stderr


def test_a_scheme_whose_runtime_is_not_installed_is_a_400(model_files):
    service = _service(model_files["lr"])

    def missing_runtime(model):
        raise ImportError("No module named 'encrypted'")

    service.add_scheme("seal", missing_runtime)
    status, body = service.handle_http("POST", {}, io.BytesIO(b'{"data": [], "key_id": "k"}'), None)
    assert status == 400 and "scheme 'seal' is not installed in this service" in body["error"]
