"""Schemas on the real classes: what each model kind records, the data sample's types, every wire
form, every refusal naming its column and row, the environment's pins and the swagger files.

The end-to-end runs through azmlinfsrv are in test_tables.py.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pandas as pd
import pytest

from aideploy import swagger
from aideploy.artifacts import Dataset
from aideploy.datafiles import CsvRows, ParquetRows
from aideploy.errors import ConfigError
from aideploy.model_requirements import distributions, merge, modules_of, override
from aideploy.predictions import same_labels, text_against_numbers
from aideploy.schemas import capture, check_columns
from aideploy_scoring import models
from aideploy_scoring.model_sklearn import SklearnModel
from aideploy_scoring.schema import Column, InputError, Schema, rows_of

COLUMNS = ["city", "plan", "age", "income", "active"]


@pytest.fixture(scope="module")
def table():
    """A mixed table as pandas reads it from a CSV: strings (non-ASCII, commas), numbers with gaps, booleans."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"city": rng.choice(["São Paulo", "Berlin", "Tokyo, JP"], n),
                          "plan": rng.choice(["basic", "pro"], n),
                          "age": rng.integers(18, 80, n).astype(float),
                          "income": rng.normal(50, 10, n).round(2),
                          "active": rng.choice([True, False], n)})
    frame.loc[::7, "age"] = np.nan
    y = ((frame.income > 50) ^ (frame.plan == "pro")).astype(int)
    return frame, y


@pytest.fixture(scope="module")
def pipeline(table):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, y = table
    pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="error"), ["city", "plan"]),
                             ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
                             ("flag", "passthrough", ["active"])])
    return Pipeline([("pre", pre), ("clf", HistGradientBoostingClassifier(max_iter=20))]).fit(frame, y)


@pytest.fixture(scope="module")
def adapter(pipeline, table):
    model = SklearnModel(pipeline)
    model.use_schema(capture(model, Dataset("sample", table[0])))
    return model


# ----------------------------------------------------------------------------- capture


def test_a_column_transformer_pipeline_records_names_types_levels_and_missing_values(adapter):
    schema = adapter.schema
    assert schema.named and schema.names == COLUMNS
    city, plan, age, income, active = schema.columns
    assert (city.type, city.levels, city.strict) == ("string", ["Berlin", "São Paulo", "Tokyo, JP"], True)
    assert plan.levels == ["basic", "pro"]
    assert age.type == "number" and age.nullable  # the imputer takes missing values
    assert not income.inferred and income.type == "number"
    # passthrough says nothing: the data sample types it
    assert active.type == "boolean" and not active.inferred and active.example in (True, False)
    assert schema.source == ["model", "data sample (sample)"]


def test_a_model_fitted_on_an_array_takes_numbers_by_position():
    from sklearn.linear_model import LogisticRegression

    model = SklearnModel(LogisticRegression().fit(np.eye(3), [0, 1, 0]))
    assert not model.schema.named and model.schema.n_features == 3


def test_lightgbm_and_xgboost_category_columns_come_back_as_categories(table):
    import lightgbm
    import xgboost

    frame, y = table
    data = frame[["city", "income"]].astype({"city": "category"})
    rows = pd.DataFrame({"city": pd.Categorical(["Berlin", "Tokyo, JP"], categories=data.city.cat.categories),
                         "income": [51.0, 49.0]})
    for estimator, levels in ((lightgbm.LGBMClassifier(n_estimators=5, verbose=-1), ["Berlin", "São Paulo", "Tokyo, JP"]),
                              (xgboost.XGBClassifier(n_estimators=5, enable_categorical=True), None)):
        model = SklearnModel(estimator.fit(data, y))
        city = model.schema.column("city")
        assert city.categorical and city.levels == levels  # XGBoost matches its levels by name
        # strings on the wire; the model gets its category column back (an object column it refuses)
        served = model.predict_rows(["income", "city"], [[51.0, "Berlin"], [49.0, "Tokyo, JP"]]).predictions
        assert served.tolist() == estimator.predict(rows).tolist()


def test_an_mlflow_signature_gives_column_types(tmp_path, table):
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame, y = table
    numbers = frame[["age", "income"]].fillna(0)
    estimator = LogisticRegression().fit(numbers, y)
    mlflow.sklearn.save_model(estimator, tmp_path / "m", signature=infer_signature(numbers, y))
    schema = models.load(tmp_path / "m", "mlflow").schema
    assert schema.named and schema.names == ["age", "income"] and {c.type for c in schema.columns} == {"number"}
    assert schema.source == ["MLflow signature"]


def test_an_onnx_model_with_one_input_per_column_is_a_table(tmp_path, table):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame, y = table
    data = frame[["city", "income"]]
    pipe = Pipeline([("pre", ColumnTransformer([("c", OneHotEncoder(), ["city"]), ("n", "passthrough", ["income"])])),
                     ("lr", LogisticRegression())]).fit(data, y)
    onx = to_onnx(pipe, initial_types=[("city", StringTensorType([None, 1])), ("income", FloatTensorType([None, 1]))],
                  options={"zipmap": False})
    (tmp_path / "m.onnx").write_bytes(onx.SerializeToString())
    model = models.load(tmp_path / "m.onnx", "onnx")
    assert model.schema.named and [(c.name, c.type) for c in model.schema.columns] == [("city", "string"),
                                                                                       ("income", "number")]
    served = model.predict_rows(["income", "city"], [[60.0, "Berlin"], [40.0, "São Paulo"]]).predictions
    assert served.tolist() == pipe.predict(pd.DataFrame({"city": ["Berlin", "São Paulo"],
                                                         "income": [60.0, 40.0]})).tolist()


# ----------------------------------------------------------------------------- the wire


def _answer(adapter, payload):
    columns, rows = rows_of(payload)
    return adapter.predict_rows(columns, rows).predictions.tolist()


def test_every_wire_form_gives_the_pipelines_own_answer_in_any_column_order(adapter, pipeline, table):
    frame = table[0].iloc[:6]
    expected = pipeline.predict(frame).tolist()
    shuffled = ["income", "active", "city", "age", "plan"]
    records = json.loads(frame[shuffled].to_json(orient="records"))
    split = json.loads(frame[shuffled].to_json(orient="split", index=False))
    for payload in ({"columns": split["columns"], "data": split["data"]},
                    {"input_data": {**split, "index": list(range(6))}},
                    {"input_data": records},
                    {"dataframe_split": split},
                    {"dataframe_records": records},
                    {"data": json.loads(frame.to_json(orient="values"))}):  # by position, in schema order
        assert _answer(adapter, json.loads(json.dumps(payload))) == expected, payload


@pytest.mark.parametrize("columns,row,message", [
    (COLUMNS[:4], ["Berlin", "pro", 30, 50.0], "missing column 'active'"),
    ([*COLUMNS[:4], "BMI"], ["Berlin", "pro", 30, 50.0, True], "unknown column 'BMI'"),
    (COLUMNS, ["Berlin", "pro", "thirty", 50.0, True], "row 0, column 'age': expected a number, got the string"),
    (COLUMNS, ["Berlin", "pro", 30, True, True], "column 'income': expected a number, got the boolean true"),
    (COLUMNS, [7, "pro", 30, 50.0, True], "column 'city': expected a string, got the number 7"),
    (COLUMNS, ["Lima", "pro", 30, 50.0, True], "column 'city': 'Lima' is not a level the model knows"),
    (COLUMNS, ["Berlin", "pro", 30, 50.0], "row 0 holds 4 values; each row needs 5"),
    (["city", "city", "age", "income", "active"], ["Berlin"] * 5, "column 'city' is given twice"),
])
def test_a_bad_request_is_refused_naming_the_column_and_row(adapter, columns, row, message):
    with pytest.raises(InputError, match=message):
        adapter.predict_rows(columns, [row])


def test_missing_values_reach_the_model_as_the_marker_it_learnt():
    from sklearn.preprocessing import OneHotEncoder

    encoder = OneHotEncoder().fit(pd.DataFrame({"plan": ["a", None, "b"]}))
    schema = Schema([Column("plan", "string", levels=["a", "b"], missing="none")])
    frame = schema.table(["plan"], [["a"], [None]])
    assert frame["plan"].tolist() == ["a", None]
    assert encoder.transform(frame).toarray().tolist() == [[1, 0, 0], [0, 0, 1]]  # None is its own level
    nan_schema = Schema([Column("x", "integer", nullable=True)])
    assert np.isnan(nan_schema.table(["x"], [[None]])["x"][0])
    assert nan_schema.table(["x"], [[3.0]])["x"].dtype == np.int64


def test_an_array_model_refuses_text_naming_the_row_and_value():
    schema = Schema.positional(2)
    with pytest.raises(InputError, match="row 1, value 0: expected a number, got the string 'x'"):
        schema.table(None, [[1, 2], ["x", 2]])
    assert schema.table(["x1", "x0"], [[1, 2]]).tolist() == [[2.0, 1.0]]


# ----------------------------------------------------------------------------- the client


def test_a_csv_is_read_in_the_schemas_types_in_any_column_order(tmp_path, adapter, pipeline, table):
    frame = table[0].iloc[:20].astype({"age": object})
    frame.loc[3, "age"] = "n/a"  # an NA spelling: missing, which the imputer takes
    frame.loc[5, "age"] = ""
    path = tmp_path / "rows.csv"
    frame[["income", "plan", "active", "age", "city"]].to_csv(path, index=False)
    dataset = Dataset("rows.csv", rows=CsvRows(path), feature_names=CsvRows(path).feature_names)
    check_columns(dataset, adapter.schema, "error", "the model")
    X = pd.concat([chunk.X_test for chunk in dataset.chunks(7)])
    assert list(X.columns) == COLUMNS and X["age"].isna().sum() == frame["age"].isin(["n/a", ""]).sum() + \
        frame["age"].isna().sum()
    assert adapter.predict(X).predictions.tolist() == pipeline.predict(pd.read_csv(path)[COLUMNS]).tolist()


def test_a_renamed_or_extra_column_fails_before_anything_is_sent(tmp_path, adapter, table):
    path = tmp_path / "renamed.csv"
    table[0].rename(columns={"income": "Income"}).assign(note="x").to_csv(path, index=False)
    dataset = Dataset("renamed.csv", rows=CsvRows(path), feature_names=CsvRows(path).feature_names)
    with pytest.raises(ConfigError, match=r"has no column 'income' \(is 'Income' it\?\), which the model takes"):
        check_columns(dataset, adapter.schema, "error", "the model")
    table[0].assign(note="x").to_csv(path, index=False)
    dataset = Dataset("extra.csv", rows=CsvRows(path), feature_names=CsvRows(path).feature_names)
    with pytest.raises(ConfigError, match="has column 'note' that the model does not take") as info:
        check_columns(dataset, adapter.schema, "error", "the model")
    assert "predict.extra_columns=drop" in info.value.hint
    check_columns(dataset, adapter.schema, "drop", "the model")
    assert list(next(dataset.chunks(5)).X_test.columns) == COLUMNS


def test_a_bad_cell_in_a_typed_column_names_its_line(tmp_path, adapter, table):
    path = tmp_path / "bad.csv"
    frame = table[0].iloc[:10].astype({"age": object})
    frame.loc[6, "age"] = "old"
    frame.to_csv(path, index=False)
    dataset = Dataset("bad.csv", rows=CsvRows(path), feature_names=CsvRows(path).feature_names)
    check_columns(dataset, adapter.schema, "error", "the model")
    with pytest.raises(ConfigError, match=r"bad.csv: line 8 \(row 6\), column 'age': expected a number, got "
                                          "'old'"):
        list(dataset.chunks(4))


def test_a_headerless_numeric_csv_keeps_its_first_row(tmp_path):
    path = tmp_path / "rows.csv"
    np.savetxt(path, np.arange(12.0).reshape(4, 3), delimiter=",")
    rows = CsvRows(path)
    assert rows.n_rows == 4 and rows.feature_names is None
    assert np.concatenate([X for X, _ in rows.chunks(3)]).shape == (4, 3)
    with pytest.raises(ConfigError, match="its first line is all numbers .* so it is data, not a header") as info:
        CsvRows(path, header=True)
    assert "data.header=false" in info.value.hint


def test_na_spellings_say_missing_where_a_model_takes_none(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n3,n/a\n")
    with pytest.raises(ConfigError, match=r"line 3 \(row 1\), column 'b' holds 'n/a', not a number \(a missing value\?\)"):
        list(CsvRows(path).chunks(10, schema=Schema.positional(2)))


def test_parquet_keeps_its_own_types(tmp_path, adapter, pipeline, table):
    frame = table[0].iloc[:30]
    frame[["active", "income", "age", "plan", "city"]].to_parquet(tmp_path / "t.parquet")
    rows = ParquetRows(tmp_path / "t.parquet")
    X = pd.concat([X for X, _ in rows.chunks(8, schema=adapter.schema)])
    assert adapter.predict(X).predictions.tolist() == pipeline.predict(frame).tolist()
    with pytest.raises(ConfigError, match="holds 'a', not a number"):  # an array model takes numbers only
        pd.DataFrame({"x": [1.0], "name": ["a"]}).to_parquet(tmp_path / "n.parquet")
        list(ParquetRows(tmp_path / "n.parquet").chunks(5))


def test_labels_compare_by_value():
    assert same_labels(np.array([0, 1, 1]), np.array([0.0, 1.0, 0.0])).tolist() == [True, True, False]
    assert same_labels(np.array(["1", "0"]), np.array([1, 0])).all()
    assert text_against_numbers(np.array(["1"]), np.array([1])) and not text_against_numbers(np.array([1]),
                                                                                          np.array([1.0]))
    assert same_labels(np.array(["cat", "dog"]), np.array(["cat", "cow"])).tolist() == [True, False]


# ----------------------------------------------------------------------------- the environment


def test_the_models_libraries_are_pinned_to_the_versions_that_loaded_it(pipeline):
    import lightgbm
    import sklearn

    pins = distributions(modules_of(pipeline))
    assert pins["scikit-learn"] == sklearn.__version__ and "numpy" in pins
    boosted = lightgbm.LGBMRegressor(n_estimators=3, verbose=-1).fit(np.eye(4), [1, 2, 3, 4])
    assert distributions(modules_of(boosted)) == {"lightgbm": lightgbm.__version__}
    assert merge(["scikit-learn>=1.3", "joblib"], [f"scikit-learn=={sklearn.__version__}"], "pip") == \
        [f"scikit-learn=={sklearn.__version__}", "joblib"]
    with pytest.raises(ConfigError, match="environment.pip asks for scikit-learn<1.0, but the model needs"):
        merge(["scikit-learn<1.0"], [f"scikit-learn=={sklearn.__version__}"], "environment.pip")


def test_a_pickle_written_by_another_scikit_learn_pins_that_one(tmp_path, monkeypatch):
    import joblib
    import sklearn
    from sklearn.linear_model import LogisticRegression

    from aideploy.model_requirements import of_sklearn

    monkeypatch.setattr(sklearn.base, "__version__", "1.5.2")  # what BaseEstimator.__getstate__ records
    joblib.dump(LogisticRegression().fit(np.eye(2), [0, 1]), tmp_path / "old.pkl")
    monkeypatch.undo()
    model = models.load(tmp_path / "old.pkl", "sklearn")
    assert model.pickled_with == "1.5.2"
    fake = type("Registered", (), {"adapter": model, "schema": model.schema})()
    assert "scikit-learn==1.5.2" in of_sklearn(fake)


def test_an_mlflow_model_brings_its_own_requirements(tmp_path):
    """MLflow writes requirements.txt beside MLmodel: its lines are the environment's, mlflow itself
    as the serving part (mlflow-skinny), pip options and comments left out."""
    from aideploy.model_requirements import of_mlflow

    model_dir = tmp_path / "model" / "mlflow_lr"
    model_dir.mkdir(parents=True)
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "requirements.txt").write_text(
        "mlflow==2.12.1\n# a comment\n-r extra.txt\nscikit-learn==1.5.2  # pinned\ncloudpickle>=3\nnot a req!\n")
    assert of_mlflow(tmp_path / "model") == ["mlflow-skinny==2.12.1", "scikit-learn==1.5.2", "cloudpickle>=3"]
    assert of_mlflow(tmp_path / "nothing") == []


def test_a_class_from_main_is_refused_before_deploy():
    fake = type("Estimator", (), {})
    fake.__module__ = "__main__"
    with pytest.raises(ConfigError, match="defined in the script that pickled it"):
        distributions(modules_of([fake()]))


def test_every_override_a_hint_shows_can_be_pasted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = ["xgboost-cpu==3.2.0", "scikit-learn>=1.3,<2", "x[extra]>=1; python_version>'3.8'"]
    line = override("environment.extra_pip", wanted)
    parsed = OverridesParser.create().parse_overrides(shlex.split(line))
    assert parsed[0].value() == wanted


# ----------------------------------------------------------------------------- swagger


def test_swagger_names_every_column_with_its_type_and_an_example(adapter):
    answer = adapter.predict_rows(None, [adapter.schema.example_row()]).to_json()
    docs = swagger.documents(adapter.schema, answer, "m:1")
    assert set(docs) == {"swagger2.json", "swagger3.json", "swagger3.1.json"}
    for name, doc in docs.items():
        schemas = doc["definitions"] if name == "swagger2.json" else doc["components"]["schemas"]
        rows = schemas["ServiceInput"]["properties"]["input_data"]
        columns = rows["items"]["properties"]
        assert list(columns) == COLUMNS
        assert [columns[c]["type"] for c in COLUMNS] == ["string", "string", "number", "number", "boolean"]
        assert columns["city"]["enum"] == ["Berlin", "São Paulo", "Tokyo, JP"]
        example = schemas["ServiceInput"]["example"]["input_data"][0]
        assert set(example) == set(COLUMNS) and example["city"] in columns["city"]["enum"]
        assert "predictions" in schemas["ServiceOutput"]["properties"]
        # the example is a request the service takes
        assert _answer(adapter, schemas["ServiceInput"]["example"])


# ----------------------------------------------------------------------------- encrypted tables


def test_a_pipeline_splits_where_its_tail_folds(pipeline, table):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aideploy_scoring.linearize import split

    frame, y = table
    pre = pipeline.named_steps["pre"]
    model = Pipeline([("pre", pre), ("scale", StandardScaler(with_mean=False)),
                      ("lr", LogisticRegression(max_iter=500))]).fit(frame, y)
    client, served = split(model)
    assert [name for name, _ in client.steps] == ["pre"] and [name for name, _ in served.steps] == ["scale", "lr"]
    numbers = make_pipeline(StandardScaler(), LogisticRegression()).fit(np.eye(3), [0, 1, 0])
    assert split(numbers) == (None, numbers)  # the whole folds: nothing runs in the client
    assert split(pipeline)[0] is None  # nothing folds (a forest of trees): refused by the schemes, not split


def test_the_client_part_a_service_describes_loads_without_running_code(pipeline):
    import base64
    import pickle
    import zipfile

    import skops.io

    from aideploy.errors import PredictError
    from aideploy.linear import ClientPart

    pre = pipeline.named_steps["pre"]
    described = {"format": "skops", "data": base64.b64encode(skops.io.dumps(pre, compression=zipfile.ZIP_DEFLATED))
                 .decode()}
    assert ClientPart.from_description(described).transformer.transformers_[0][0] == "cat"

    class Evil:  # a class skops does not trust: a service cannot make the client run it
        def __reduce__(self):
            return (print, ("pwned",))

    hostile = {"format": "skops", "data": base64.b64encode(skops.io.dumps([Evil()])).decode()}
    with pytest.raises(PredictError, match="the service's preprocessing cannot be loaded"):
        ClientPart.from_description(hostile)
    with pytest.raises(PredictError):
        ClientPart.from_description({"format": "pickle", "data": base64.b64encode(pickle.dumps(pre)).decode()})
