"""``target=batch_endpoint``: its plan is azure-ai-ml's real requests, valid against the spec of each one's
api-version, and its batch scorer (``aideploy_scoring/batch_score.py``) scores files as the model does.

Every request of every variant (public and vnet, a cluster created or an existing one, delete) is checked
against the extracts in tests/azure_spec (2023-10-01 for the endpoint, 2024-01-01-preview for the
deployment, 2023-08-01-preview for the compute cluster, the assets' and datastore's as for the managed
endpoint), with no error but azure-ai-ml's own deviation (tests/test_azure_requests.py SDK_DEVIATIONS);
``plan.sh --what-if`` names every request in order. For each new extract a real plan body that breaks
one of its rules is refused. The scorer staged by a plan is run here on CSV and Parquet files with
``init()`` and ``run(mini_batch)``, as Azure's batch runtime runs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from aideploy import api
from aideploy.plan_script import plan_requests, request_url
from openapi_check import Spec

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.usefixtures("no_azure_env", "no_network")]
pytest.importorskip("azure.ai.ml", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")

from test_azure_requests import SDK_DEVIATIONS, _set, spec_errors  # noqa: E402
from test_azure_targets import CREDENTIAL_VARS, WORKSPACE_VARS, no_azure_env, no_network  # noqa: E402,F401
from test_tables import FEATURES, _table  # noqa: E402

SPEC = Spec()
BATCH = ("target=batch_endpoint", "deployment_name=digits-batch")
VNET = ("network=vnet", "network.vnet_name=batchvnet", "network.subnet_name=batchsubnet")
VARIANTS = {"public": (), "vnet": VNET, "existing-cluster": ("target.create_compute=false",), "delete": ("mode=delete",)}
VERSIONS = {"2024-10-01-preview", "2023-08-01-preview", "2023-10-01", "2023-04-01", "2023-04-01-preview",
            "2024-01-01-preview"}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Each variant's plan.json and plan.sh, made once (no workspace, credential or network needed)."""
    made = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in (*WORKSPACE_VARS, *CREDENTIAL_VARS):
            patch.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("batch-plans")
        patch.chdir(root)
        for variant, overrides in VARIANTS.items():
            out = root / variant
            results = api.run(["dry_run=true", f"home={root / 'home'}", *BATCH, *overrides], out)
            assert results["status"] == "ok", (variant, results.get("error"))
            made[variant] = (json.loads((out / "plan.json").read_text()), out / "plan.sh", out)
    made["root"] = root
    return made


def _request(plan: dict, action: str, index: int = 0) -> dict:
    return [a["request"] for a in plan["actions"] if a["action"] == action][index]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_batch_plan_variant_passes_the_spec_check(plans, variant):
    plan = plans[variant][0]
    assert [e for e in spec_errors(plan) if e not in SDK_DEVIATIONS] == []
    versions = {r["api-version"] for _, r in plan_requests(plan) if r.get("api-version")}
    assert versions == ({"2023-10-01"} if variant == "delete" else VERSIONS)


def test_the_plan_is_the_cluster_the_endpoint_the_deployment_and_its_default(plans):
    plan = plans["public"][0]
    assert [a["action"] for a in plan["actions"] if "request" in a or "requests" in a] == [
        "workspaces.get", "compute.begin_create_or_update", "batch_endpoints.begin_create_or_update",
        "datastores.get_default", "datastores._list_secrets", "upload for code", "code.create_or_update",
        "environments.create_or_update", "upload for models", "models.create_or_update",
        "batch_deployments.begin_create_or_update", "batch_endpoints.begin_create_or_update",
        "batch_endpoints.begin_delete"]
    compute = _request(plan, "compute.begin_create_or_update")["body"]["properties"]
    assert compute["computeType"] == "AmlCompute"
    assert compute["properties"]["scaleSettings"] == {"maxNodeCount": 2, "minNodeCount": 0,
                                                      "nodeIdleTimeBeforeScaleDown": "PT2M"}
    deployment = _request(plan, "batch_deployments.begin_create_or_update")["body"]["properties"]
    assert deployment["codeConfiguration"]["scoringScript"] == "aideploy_scoring/batch_score.py"
    assert {k: deployment[k] for k in ("miniBatchSize", "maxConcurrencyPerInstance", "outputAction", "outputFileName",
                                       "errorThreshold", "retrySettings", "loggingLevel")} == {
        "miniBatchSize": 10, "maxConcurrencyPerInstance": 1, "outputAction": "AppendRow",
        "outputFileName": "predictions.csv", "errorThreshold": -1,
        "retrySettings": {"maxRetries": 3, "timeout": "PT5M"}, "loggingLevel": "Info"}
    assert deployment["compute"].endswith("/workspaces/{workspaceName}/computes/aideploy-batch")
    assert deployment["resources"]["instanceCount"] == 1
    endpoint, default = (_request(plan, "batch_endpoints.begin_create_or_update", i)["body"] for i in (0, 1))
    assert endpoint["properties"]["authMode"] == "AADToken" and "defaults" not in endpoint["properties"]
    assert default["properties"]["defaults"] == {"deploymentName": "blue"}
    # long-running operations are polled by the header their spec answers with
    for action in ("compute.begin_create_or_update", "batch_endpoints.begin_create_or_update",
                   "batch_deployments.begin_create_or_update", "batch_endpoints.begin_delete"):
        request = _request(plan, action)
        _, _, operation, _ = SPEC.operation(request)
        headers = {h for r in operation["responses"].values() for h in r.get("headers", {})}
        assert operation.get("x-ms-long-running-operation") and request["long_running"]["header"] in headers


def test_the_cluster_joins_the_named_subnet_and_an_existing_one_is_read(plans):
    subnet = _request(plans["vnet"][0], "compute.begin_create_or_update")["body"]["properties"]["properties"]["subnet"]
    assert subnet == {"id": "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
                            "Microsoft.Network/virtualNetworks/batchvnet/subnets/batchsubnet"}
    read = _request(plans["existing-cluster"][0], "compute.get")
    assert read["method"] == "GET" and SPEC.operation(read)[2]["operationId"] == "Compute_Get"


def test_delete_is_the_endpoints_delete_and_keeps_the_cluster(plans):
    plan = plans["delete"][0]
    assert plan["mode"] == "delete" and [a["action"] for a in plan["actions"]] == ["batch_endpoints.begin_delete",
                                                                                    "compute"]
    assert plan["actions"][0]["request"]["method"] == "DELETE" and "request" not in plan["actions"][1]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_plan_sh_what_if_names_every_request_in_order(plans, variant):
    plan, script, _ = plans[variant]
    proc = subprocess.run(["bash", str(script), "--what-if"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert [line.split("   # ")[0] for line in proc.stdout.splitlines()] == \
        [f"{r['method']} {request_url(r)}" for _, r in plan_requests(plan)]


def test_no_batch_plan_carries_a_seed_leftover_or_a_local_path(plans):
    for variant in VARIANTS:
        plan = plans[variant][0]
        text = json.dumps(plan)
        assert "MNIST" not in text and "EXAMPLE_" not in text and "amlvnet1" not in text
        sent = json.dumps([{k: v for k, v in r.items() if k != "file"} for _, r in plan_requests(plan)])
        for local in (str(Path.home()), str(plans["root"]), str(Path(__file__).parents[1])):
            assert local not in sent, (variant, local)


BREAKING = {
    # api-version: (action, dotted path, value, the error the spec of that version gives)
    "2023-10-01": ("batch_endpoints.begin_create_or_update", "properties.authMode", "aadToken",
                   "$.properties.authMode: 'aadToken' is not one of ['AMLToken', 'Key', 'AADToken'] "
                   "(casing: 'AADToken')"),
    "2024-01-01-preview": ("batch_deployments.begin_create_or_update", "properties.loggingLevel", "info",
                           "$.properties.loggingLevel: 'info' is not one of ['Info', 'Warning', 'Debug'] "
                           "(casing: 'Info')"),
    "2023-08-01-preview": ("compute.begin_create_or_update", "properties.properties.scaleSettings", {"minNodeCount": 0},
                           "$.properties.properties.scaleSettings: required property 'maxNodeCount' is missing"),
}
"""For each new extract, a real plan body changed to break one rule of its version: the spellings azure-ai-ml
sends by default for a batch endpoint's auth and a deployment's logging level, and a cluster's required size."""


@pytest.mark.parametrize("api_version", sorted(BREAKING))
def test_a_real_batch_body_breaking_a_rule_of_its_version_is_caught(plans, api_version):
    action, path, value, expected = BREAKING[api_version]
    request = _request(plans["public"][0], action)
    assert request["api-version"] == api_version and SPEC.check_request(request) == []
    assert SPEC.check_request({**request, "body": _set(request["body"], path, value)}) == [expected]


def test_a_compute_subtype_the_extract_does_not_keep_is_refused(plans):
    request = _request(plans["public"][0], "compute.begin_create_or_update")
    errors = SPEC.check_request({**request, "body": _set(request["body"], "properties.computeType", "ComputeInstance")})
    assert errors[0] == "$.properties.computeType: 'ComputeInstance' names no subtype of Compute (known: ['AmlCompute'])"


@pytest.mark.parametrize("overrides,expected", [
    (("dry_run=true", "encryption=fast"), "target=batch_endpoint scores files in Azure, where they are read in clear"),
    (("mode=update",), "target=batch_endpoint has no mode=update"),
    ((), "target=batch_endpoint is planned, not deployed, by aideploy (mode=run)"),
    (("dry_run=true", "network=vnet"), "network=vnet with target=batch_endpoint puts the compute cluster in your "
                                       "subnet, and network.vnet_name or network.subnet_name is not given"),
])
def test_what_a_batch_endpoint_cannot_do_is_one_line_before_anything_runs(tmp_path, overrides, expected):
    from aideploy.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        api.run([f"home={tmp_path / 'home'}", *BATCH, *overrides], tmp_path / "out")
    assert str(info.value).startswith(expected) and info.value.hint
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "failed" and "data" not in results["stage_seconds"]


# ----------------------------------------------------------------------------- the batch scorer, on files


def _scorer(source: Path):
    """The staged batch_score.py as the batch runtime loads it: a module from its path."""
    spec = importlib.util.spec_from_file_location("staged_batch_score", source / "aideploy_scoring" / "batch_score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mixed_plan(tmp_path_factory):
    """A mixed table's pipeline planned for a batch endpoint: its staged code and registered model version."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    folder = tmp_path_factory.mktemp("batch-scorer")
    train, y = _table(1500, 0)
    train.to_csv(folder / "train.csv", index=False)
    read = pd.read_csv(folder / "train.csv")
    pre = ColumnTransformer([
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["city", "plan"]),
        ("num", SimpleImputer(), ["age", "income", "visits"]), ("flag", "passthrough", ["active"])])
    pipeline = Pipeline([("pre", pre), ("clf", HistGradientBoostingClassifier(max_iter=20))]).fit(read[FEATURES], y)
    joblib.dump(pipeline, folder / "pipeline.pkl")
    out = folder / "plan"
    with pytest.MonkeyPatch.context() as patch:
        for name in (*WORKSPACE_VARS, *CREDENTIAL_VARS):
            patch.delenv(name, raising=False)
        patch.chdir(folder)
        results = api.run(["dry_run=true", f"home={folder / 'home'}", *BATCH, "model=sklearn_pickle",
                           f"model.path={folder / 'pipeline.pkl'}", "data=csv", f"data.path={folder / 'train.csv'}"],
                          out)
    assert results["status"] == "ok", results.get("error")
    model_dir = next((folder / "home" / "models").glob("*/*"))
    return folder, pipeline, out / "deploy" / "source", model_dir


def test_the_batch_scorer_predicts_csv_and_parquet_files_as_the_model_does(mixed_plan, monkeypatch):
    folder, pipeline, source, model_dir = mixed_plan
    first, _ = _table(120, 1)
    second, _ = _table(80, 2)
    first.assign(extra="not a feature")[["visits", "extra", "active", "income", "plan", "age", "city"]] \
        .to_csv(folder / "a.csv", index=False)  # columns in another order, one the model does not take
    second.to_parquet(folder / "b.parquet")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
    scorer = _scorer(source)
    scorer.init()
    out = scorer.run([str(folder / "a.csv"), str(folder / "b.parquet")])
    assert list(out.columns[:3]) == ["file", "row", "prediction"] and "proba_1" in out.columns
    for name, frame in (("a.csv", pd.read_csv(folder / "a.csv")), ("b.parquet", second)):
        rows = out[out["file"] == name]
        assert list(rows["row"]) == list(range(len(frame)))
        assert (rows["prediction"].to_numpy() == pipeline.predict(frame[FEATURES])).all(), name
        assert np.abs(rows[["proba_0", "proba_1"]].to_numpy() - pipeline.predict_proba(frame[FEATURES])).max() < 1e-12
    # a file of any size is read a chunk at a time: the same predictions from chunks of 7 rows
    chunked = pd.concat(scorer.score_file(folder / "a.csv", scorer.model, chunk_rows=7), ignore_index=True)
    assert chunked["prediction"].tolist() == out[out["file"] == "a.csv"]["prediction"].tolist()
    assert list(chunked["row"]) == list(range(120))


def test_a_file_the_model_cannot_take_fails_its_mini_batch_naming_the_file(mixed_plan, monkeypatch):
    folder, _, source, model_dir = mixed_plan
    bad, _ = _table(5, 3)
    bad.loc[3, "income"] = "lots"
    bad.to_csv(folder / "bad.csv", index=False)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
    scorer = _scorer(source)
    scorer.init()
    from aideploy_scoring.schema import InputError

    with pytest.raises(InputError, match="bad.csv: row 3, column 'income'"):
        scorer.run([str(folder / "bad.csv")])



def test_a_batch_endpoint_declares_itself_an_azure_target_of_files_in_clear():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aideploy.manager import PluginRegistry
    from aideploy.targets import capabilities

    ctx = SimpleNamespace(cfg=OmegaConf.create({"target": {"plugin": "batch_endpoint"}}), plugins=PluginRegistry.load())
    declared = capabilities(ctx)
    assert (declared.runs_here, declared.cloud, declared.serves, declared.schemes) == (False, "azure", "batch", ("plain",))
    assert not declared.serves_mlps
