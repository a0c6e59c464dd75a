"""Tables end to end, through the real ``aideploy`` command and the real azmlinfsrv.

A ColumnTransformer pipeline fitted on a DataFrame (strings, booleans, numbers with gaps) is
deployed with nothing added by hand, and predicts an unlabeled CSV with non-ASCII strings,
quoted commas, empty cells and its columns in another order: every prediction equals the
pipeline's own in this process, in ``mode=run`` and against ``mode=serve`` with ``mode=predict``
and with requests in Azure ML's and MLflow's forms. XGBoost and LightGBM models deploy the same
way. A renamed column, a missing module and a version mismatch fail before any client request.
"""

from __future__ import annotations

import json
import textwrap

import joblib
import numpy as np
import pandas as pd
import pytest
import requests
from conftest import SERVE_KEY, results_of, served

KEY = {"AIDEPLOY_SCORING_KEY": SERVE_KEY}
FEATURES = ["city", "plan", "age", "income", "active", "visits"]


def _table(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "city": rng.choice(["São Paulo", "Berlin", "Tokyo, JP", "Zürich", 'Quote "Q" Town'], n),
        "plan": rng.choice(["basic", "pro", "team"], n),
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(50, 10, n).round(2),
        "active": rng.choice([True, False], n),
        "visits": rng.integers(0, 30, n),
    })
    frame.loc[::9, "age"] = np.nan
    frame.loc[::13, "city"] = np.nan
    y = ((frame.income > 50) ^ (frame.plan == "pro") ^ frame.active).astype(int)
    return frame, y


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The pipeline as a user fits it (on a DataFrame read from a CSV), and an unlabeled test CSV
    with its columns in another order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder = tmp_path_factory.mktemp("mixed")
    train, y = _table(2000, 0)
    train.assign(churn=y).to_csv(folder / "train.csv", index=False)
    read = pd.read_csv(folder / "train.csv")
    pre = ColumnTransformer([
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["city", "plan"]),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income", "visits"]),
        ("flag", "passthrough", ["active"])])
    pipeline = Pipeline([("pre", pre), ("clf", HistGradientBoostingClassifier(max_iter=40))])
    pipeline.fit(read[FEATURES], read["churn"])
    joblib.dump(pipeline, folder / "pipeline.pkl")
    test, _ = _table(300, 1)
    test[["visits", "active", "income", "plan", "age", "city"]].to_csv(folder / "test.csv", index=False)
    expected = pipeline.predict(pd.read_csv(folder / "test.csv")[FEATURES])
    return folder, pipeline, expected


def _model(folder):
    return ("model=sklearn_pickle", f"model.path={folder / 'pipeline.pkl'}")


def test_mode_run_predicts_a_mixed_csv_as_the_pipeline_does(cli, mixed):
    folder, _, expected = mixed
    text = (folder / "test.csv").read_text(encoding="utf-8")
    assert "São Paulo" in text and '"Tokyo, JP"' in text and ",," in text  # what the test is about
    proc = cli(*_model(folder), "data=csv", f"data.path={folder / 'test.csv'}")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["n_samples"] == len(expected)
    served = pd.read_csv(proc.out / "predictions.csv")
    assert served["prediction"].tolist() == expected.tolist()
    spec = (proc.out / "environment.yml").read_text()
    import sklearn

    assert f"scikit-learn=={sklearn.__version__}" in spec and "pandas==" in spec  # found, not hand-added
    assert "first request answered" in proc.stderr


def test_mode_run_with_a_renamed_column_stops_before_anything_is_deployed(cli, mixed, tmp_path):
    folder, _, _ = mixed
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(folder / "test.csv").rename(columns={"income": "Income"}).to_csv(renamed, index=False)
    proc = cli(*_model(folder), "data=csv", f"data.path={renamed}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "renamed.csv has no column 'income' (is 'Income' it?)" in proc.stderr and "hint:" in proc.stderr
    stages = results_of(proc.out)["stage_seconds"]
    assert "deploy" not in stages and "environment" not in stages, stages


def test_serve_predict_curl_forms_swagger_and_refusals(cli, mixed, tmp_path):
    folder, pipeline, expected = mixed
    frame = pd.read_csv(folder / "test.csv")
    head = frame.iloc[:25]
    with served(cli, *_model(folder), "data=csv", f"data.path={folder / 'test.csv'}",
                "deployment_name=tables") as uri:
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={folder / 'test.csv'}", env=KEY)
        assert proc.returncode == 0, proc.stderr
        assert pd.read_csv(proc.out / "predictions.csv")["prediction"].tolist() == expected.tolist()

        auth = {"Authorization": f"Bearer {SERVE_KEY}"}
        split = json.loads(head.to_json(orient="split", index=False))
        records = json.loads(head.to_json(orient="records"))
        for body in ({"input_data": {**split, "index": list(range(len(head)))}}, {"input_data": records},
                     {"dataframe_split": split}, {"dataframe_records": records}, split):
            answer = requests.post(uri, json=body, headers=auth, timeout=30)
            assert answer.status_code == 200, (body, answer.text)
            assert answer.json()["predictions"] == expected[:25].tolist()

        base = uri.rsplit("/", 1)[0]
        doc = requests.get(f"{base}/swagger.json", timeout=30).json()
        service_input = doc["definitions"]["ServiceInput"]
        columns = service_input["properties"]["input_data"]["items"]["properties"]
        assert {name: spec["type"] for name, spec in columns.items()} == {
            "city": "string", "plan": "string", "age": "number", "income": "number", "active": "boolean",
            "visits": "number"}  # a scaler takes any number, whole or not
        # missing cells in training, taken by an imputer: may be null; the passthrough boolean: not
        assert columns["age"].get("x-nullable") is True and columns["city"].get("x-nullable") is True
        assert "x-nullable" not in columns["active"]
        example = service_input["example"]
        assert requests.post(uri, json=example, headers=auth, timeout=30).status_code == 200
        described = requests.get(uri, headers=auth, timeout=30).json()["input"]
        assert [c["name"] for c in described["columns"]] == FEATURES

        bad = dict(records[0], income="a lot")
        refused = requests.post(uri, json={"dataframe_records": [bad]}, headers=auth, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"] == "row 0, column 'income': expected a number, got the string 'a lot'"

        renamed = tmp_path / "renamed.csv"
        frame.rename(columns={"income": "Income"}).to_csv(renamed, index=False)
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={renamed}", env=KEY)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "renamed.csv has no column 'income' (is 'Income' it?)" in proc.stderr and "hint:" in proc.stderr
        assert not (proc.out / "predictions.csv").exists()


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_gradient_boosting_libraries_deploy_with_the_environment_they_need(cli, tmp_path, library):
    """A classifier (LightGBM's with a category column) and a regressor, each deployed with its
    library found in the pickle and pinned; agreement with the model in process."""
    import lightgbm
    import xgboost

    frame, y = _table(600, 2)
    numbers = frame[["age", "income", "visits"]]
    if library == "xgboost":
        classifier = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(numbers, y)
        regressor = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(numbers, frame.income * 2)
        data = numbers
    else:
        data = frame[["plan", "age", "income"]].astype({"plan": "category"})
        classifier = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(data, y)
        regressor = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(numbers, frame.income * 2)
    test_csv = tmp_path / "test.csv"
    data.iloc[:150].assign(label=y[:150]).to_csv(test_csv, index=False)
    for name, model, task in (("classifier", classifier, "classification"), ("regressor", regressor, "regression")):
        joblib.dump(model, tmp_path / f"{name}.pkl")
        csv = test_csv if name == "classifier" else tmp_path / "numbers.csv"
        if name == "regressor":
            numbers.iloc[:150].to_csv(csv, index=False)
        proc = cli("model=sklearn_pickle", f"model.path={tmp_path / f'{name}.pkl'}", "data=csv", f"data.path={csv}",
                   *(["data.label_column=label"] if name == "classifier" else []))
        assert proc.returncode == 0, proc.stderr
        results = results_of(proc.out)
        assert results["task"] == task
        if task == "classification":
            assert results["agreement"] == 1.0 and results["max_probability_error"] < 1e-9
        else:
            assert results["max_abs_diff"] < 1e-9
        spec = (proc.out / "environment.yml").read_text()
        assert f"{'xgboost-cpu' if library == 'xgboost' else 'lightgbm'}=={(xgboost if library == 'xgboost' else lightgbm).__version__}" in spec


def test_a_module_the_service_lacks_fails_the_deploy_naming_it(cli, tmp_path):
    """The model imports a module only when it predicts: init() works, the first request would not."""
    import sys

    helper = tmp_path / "lazy_helper.py"
    helper.write_text(textwrap.dedent("""
        def shifted(X):
            import aideploy_absent_module  # noqa: F401 - only the service's first request imports it
            return X
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer

        import lazy_helper

        model = make_pipeline(FunctionTransformer(lambda X: X), LogisticRegression()).fit(np.eye(4), [0, 1, 0, 1])
        model.steps[0][1].func = lazy_helper.shifted
        joblib.dump(model, tmp_path / "lazy.pkl")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lazy_helper", None)
    np.savetxt(tmp_path / "rows.csv", np.eye(4), delimiter=",")
    proc = cli("model=sklearn_pickle", f"model.path={tmp_path / 'lazy.pkl'}", "data=csv",
               f"data.path={tmp_path / 'rows.csv'}", "environment=current", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1 and "Traceback (most recent call last)" not in proc.stderr.split("--- last lines")[0]
    assert "cannot import 'aideploy_absent_module'" in proc.stderr
    assert """'environment.extra_pip=["aideploy_absent_module"]'""" in proc.stderr
    assert results_of(proc.out)["stage_seconds"].keys() >= {"deploy"} and "predict" not in \
        results_of(proc.out)["stage_seconds"]


def test_a_pickle_from_another_scikit_learn_fails_the_deploy_naming_the_version(cli, tmp_path, monkeypatch):
    import sklearn.base
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setattr(sklearn.base, "__version__", "1.5.2")
    joblib.dump(LogisticRegression().fit(np.eye(3), [0, 1, 0]), tmp_path / "old.pkl")
    monkeypatch.undo()
    np.savetxt(tmp_path / "rows.csv", np.eye(3), delimiter=",")
    proc = cli("model=sklearn_pickle", f"model.path={tmp_path / 'old.pkl'}", "data=csv",
               f"data.path={tmp_path / 'rows.csv'}", "environment=current")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"scikit-learn==1.5.2 (installed: {sklearn.__version__})" in proc.stderr


def test_an_encrypted_mixed_table_runs_its_preprocessing_in_the_client(cli, mixed, tmp_path):
    """A ColumnTransformer (encoders, imputers: not one affine map) before a LogisticRegression:
    the client runs the transformer, the service only the linear part on ciphertexts, in
    mode=run (the model in process) and in mode=predict (the service describes the transformer)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    folder, pipeline, _ = mixed
    read = pd.read_csv(folder / "train.csv")
    linear = Pipeline([("pre", pipeline.named_steps["pre"]), ("lr", LogisticRegression(max_iter=1000))])
    linear.fit(read[FEATURES], read["churn"])
    joblib.dump(linear, tmp_path / "linear.pkl")
    test = pd.read_csv(folder / "test.csv")
    expected = linear.predict(test[FEATURES])
    run = ("model=sklearn_pickle", f"model.path={tmp_path / 'linear.pkl'}", "data=csv",
           f"data.path={folder / 'test.csv'}", "encryption=fast")
    proc = cli(*run)
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3
    assert pd.read_csv(proc.out / "predictions.csv")["prediction"].tolist() == expected.tolist()
    with served(cli, *run, "deployment_name=tables-fast") as uri:
        described = requests.get(uri, headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=30).json()
        assert described["schemes"] == ["none", "fast"] and described["preprocess"]["format"] == "skops"
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={folder / 'test.csv'}",
                   "encryption=fast", env=KEY)
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(proc.out / "predictions.csv")["prediction"].tolist() == expected.tolist()


def test_an_encrypted_mixed_table_under_seal_runs_the_same_client_part(cli, mixed, tmp_path):
    """encrypted-inference's scheme takes the client part's output as fast does (6 rows: ~0.5 s each)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    folder, pipeline, _ = mixed
    read = pd.read_csv(folder / "train.csv")
    linear = Pipeline([("pre", pipeline.named_steps["pre"]), ("lr", LogisticRegression(max_iter=1000))])
    linear.fit(read[FEATURES], read["churn"])
    joblib.dump(linear, tmp_path / "linear.pkl")
    proc = cli("model=sklearn_pickle", f"model.path={tmp_path / 'linear.pkl'}", "data=csv",
               f"data.path={folder / 'test.csv'}", "data.limit=6", "encryption=seal")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3
    expected = linear.predict(pd.read_csv(folder / "test.csv")[FEATURES].iloc[:6])
    assert pd.read_csv(proc.out / "predictions.csv")["prediction"].tolist() == expected.tolist()
