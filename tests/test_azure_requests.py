"""Azure plans are the SDKs' real requests, valid against Microsoft's REST specs.

``target=managed_endpoint`` (azure-ai-ml) against the 2026-07-01 spec, with no exception for the
endpoint and deployment; ``target=aci`` (azureml-core) against the 2019-09-30 v1 Model Management
spec, except for the listed gaps where that spec is older than the SDK (at the end of this file).

Each plan action carries the request azure-ai-ml would send (method, path, api-version, body),
built by the installed SDK's own request builders and serialiser. Every body is checked against
the 2026-07-01 definitions extracted into ``tests/azure_spec/`` (see its README), for every
combination of network, auth mode and encryption scheme. Nothing leaves this machine: plans
need no workspace or credential, and the ``no_network`` fixture fails any connection.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from aideploy import api
from aideploy.errors import ConfigError
from openapi_check import SPEC_DIR, Spec

# No workspace or credential in the environment, and any connection off this machine fails the test.
pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.usefixtures("no_azure_env", "no_network")]
pytest.importorskip("azure.ai.ml", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")

from test_azure_targets import no_azure_env, no_network  # noqa: E402,F401  (the fixtures above)

BODY_DEFINITIONS = {
    "online_endpoints.begin_create_or_update": "OnlineEndpoint",
    "online_deployments.begin_create_or_update": "OnlineDeployment",
    "code.create_or_update": "CodeVersion",
    "environments.create_or_update": "EnvironmentVersion",
    "models.create_or_update": "ModelVersion",
}
"""Which spec definition each action's request body is (the body parameter of its operation)."""

SDK_DEVIATIONS = {
    ("code.create_or_update", "$.properties.properties.hash_version: 202208 is not of type string"),
}
"""Where azure-ai-ml itself departs from the spec, not aideploy: each is listed with why.

- ``hash_version``: azure-ai-ml puts the content-hash version in the code asset's property
  dictionary as an integer (``Code._to_rest_object``: ``get_content_hash_version()``); the spec
  types that dictionary ``string -> string``. ARM's JSON reader accepts the number; aideploy
  sends what the SDK builds and does not rewrite it.
"""

SPEC = Spec()
WORKSPACE_PREFIX = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
                    "Microsoft.MachineLearningServices/workspaces/{workspaceName}")


def plan_for(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "out"
    results = api.run(["dry_run=true", f"home={tmp_path / 'home'}", "target=managed_endpoint", *overrides], out)
    assert results["status"] == "ok", results.get("error")
    return json.loads((out / "plan.json").read_text())


def actions(plan: dict, name: str) -> list[dict]:
    return [a for a in plan["actions"] if a["action"] == name]


def spec_errors(plan: dict) -> list[tuple[str, str]]:
    """(action, error) for every request body in the plan that departs from the spec."""
    errors = []
    for a in plan["actions"]:
        body = a.get("request", {}).get("body")
        if body is not None:
            errors += [(a["action"], e) for e in SPEC.validate(body, f"#/definitions/{BODY_DEFINITIONS[a['action']]}")]
    return errors


def spec_path(path: str) -> str:
    """The spec's template for a concrete path (names replaced by their parameters)."""
    path = re.sub(r"/onlineEndpoints/[^/]+", "/onlineEndpoints/{endpointName}", path)
    return re.sub(r"/deployments/[^/]+", "/deployments/{deploymentName}", path)


# ----------------------------------------------------------------------------- every combination


@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth_mode", ["key", "aml_token", "aad_token"])
def test_every_managed_body_validates_against_the_2026_07_01_spec(tmp_path, network, auth_mode):
    plan = plan_for(tmp_path, f"network={network}", f"target.auth_mode={auth_mode}")
    bodies = [a for a in plan["actions"] if "body" in a.get("request", {})]
    assert [a["action"] for a in bodies] == [
        "online_endpoints.begin_create_or_update", "code.create_or_update", "environments.create_or_update",
        "models.create_or_update", "online_deployments.begin_create_or_update",
        "online_endpoints.begin_create_or_update"]
    assert set(spec_errors(plan)) <= SDK_DEVIATIONS, spec_errors(plan)
    # The endpoint and deployment bodies have no exception at all.
    assert not [e for e in spec_errors(plan) if e[0].startswith("online_")]

    endpoint, traffic = (a["request"]["body"] for a in actions(plan, "online_endpoints.begin_create_or_update"))
    expected_mode = {"key": "Key", "aml_token": "AMLToken", "aad_token": "AADToken"}[auth_mode]
    access = "Disabled" if network == "vnet" else "Enabled"
    assert endpoint["properties"]["authMode"] == expected_mode
    assert endpoint["properties"]["publicNetworkAccess"] == access
    assert endpoint["location"] == "{workspaceLocation}" and "name" not in endpoint
    # The traffic update re-sends the whole endpoint, with the traffic set.
    assert traffic["properties"]["traffic"] == {"blue": 100}
    assert {**traffic, "properties": {**traffic["properties"], "traffic": {}}} == endpoint

    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["request"]["body"]["properties"]
    assert deployment["endpointComputeType"] == "Managed"
    assert deployment["egressPublicNetworkAccess"] == access
    assert deployment["requestSettings"] == {"maxConcurrentRequestsPerInstance": 1, "requestTimeout": "PT1M"}


@pytest.mark.parametrize("encryption,delay,timeout", [("seal", "PT30S", "PT15S"), ("fast", "PT20S", "PT2S")])
def test_probes_follow_the_encryption_scheme(tmp_path, encryption, delay, timeout):
    plan = plan_for(tmp_path, f"encryption={encryption}", "keystore=azure_blob")
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["request"]["body"]["properties"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert deployment[probe]["initialDelay"] == delay and deployment[probe]["timeout"] == timeout
    assert set(spec_errors(plan)) <= SDK_DEVIATIONS


def test_request_settings_follow_the_timeout_and_workers(tmp_path):
    plan = plan_for(tmp_path, "target.request_timeout=120", "target.worker_count=3")
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["request"]["body"]["properties"]
    assert deployment["requestSettings"] == {"maxConcurrentRequestsPerInstance": 3, "requestTimeout": "PT2M"}
    assert deployment["environmentVariables"] == {"WORKER_COUNT": "3", "AIDEPLOY_PREPARE_SCHEMES": "none"}
    assert set(spec_errors(plan)) <= SDK_DEVIATIONS


# ----------------------------------------------------------------------------- the requests themselves


def test_requests_use_the_installed_sdks_paths_and_api_versions(tmp_path):
    from azure.ai.ml._restclient.arm_ml_service.operations import _operations as generated

    from aideploy.azure_requests import plan_client

    plan = plan_for(tmp_path)
    requests = {a["action"] + ("#2" if i else ""): a["request"] for name in
                {a["action"] for a in plan["actions"] if "request" in a}
                for i, a in enumerate(actions(plan, name))}
    client = plan_client()
    # The api-version each operation group of MLClient is pinned to in this SDK.
    assert requests["online_endpoints.begin_create_or_update"]["api-version"] == \
        client.online_endpoints._online_operation._config.api_version
    assert requests["online_deployments.begin_create_or_update"]["api-version"] == \
        client.online_deployments._online_deployment._config.api_version
    assert requests["models.create_or_update"]["api-version"] == \
        client.models._model_versions_operation._config.api_version
    assert {r["method"] for k, r in requests.items() if k.endswith("create_or_update")} == {"PUT"}
    assert requests["online_endpoints.get_keys"]["method"] == "POST"
    assert requests["online_endpoints.begin_delete"]["method"] == "DELETE"
    for request in requests.values():
        assert request["path"].startswith(WORKSPACE_PREFIX)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", request["api-version"])
    # The online endpoint paths are the spec's own templates.
    spec_paths = set(json.loads((SPEC_DIR / "paths.json").read_text())["paths"])
    for key in ("online_endpoints.begin_create_or_update", "online_deployments.begin_create_or_update",
                "online_endpoints.get_keys", "online_endpoints.begin_delete"):
        assert spec_path(requests[key]["path"]) in spec_paths, requests[key]["path"]
    # And the generated builders' own template (not a copy of it) produced them.
    assert "onlineEndpoints/{endpointName}/deployments/{deploymentName}" in \
        open(generated.__file__).read()


def test_deployment_points_at_the_registered_assets(tmp_path):
    plan = plan_for(tmp_path)
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["request"]["body"]["properties"]
    code, env, model = (actions(plan, name)[0]["request"]["path"] for name in
                        ("code.create_or_update", "environments.create_or_update", "models.create_or_update"))
    assert deployment["codeConfiguration"]["codeId"] == code
    assert deployment["environmentId"] == env
    assert deployment["model"] == model
    assert "/environments/CliV2AnonymousEnvironment/versions/" in env
    model_body = actions(plan, "models.create_or_update")[0]["request"]["body"]["properties"]
    assert model_body["modelUri"].startswith("azureml://subscriptions/{subscriptionId}/resourcegroups/"
                                             "{resourceGroupName}/workspaces/{workspaceName}/datastores/"
                                             "workspaceblobstore/paths/LocalUpload/")


def test_the_sdks_yaml_form_is_not_a_request(tmp_path):
    """What plans showed before: the readable settings. The checker finds what the issue found."""
    plan = plan_for(tmp_path, "network=vnet")
    readable = actions(plan, "online_endpoints.begin_create_or_update")[0]["settings"]
    errors = SPEC.validate(readable, "#/definitions/OnlineEndpoint")
    assert "$: required property 'location' is missing" in errors
    assert "$.name: read-only, a request must not send it" in errors
    assert "$.properties: required property 'authMode' is missing" in errors
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["settings"]
    assert "$.properties: required property 'endpointComputeType' is missing" in \
        SPEC.validate(deployment, "#/definitions/OnlineDeployment")


def test_the_sdk_passes_lowercase_network_access_through_and_the_spec_refuses_it():
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from aideploy.azure_requests import wire_body

    body = wire_body(ManagedOnlineEndpoint(name="ep-1", auth_mode="key", public_network_access="disabled")
                     ._to_rest_online_endpoint(location="japaneast"))
    assert body["properties"]["publicNetworkAccess"] == "disabled"  # the SDK does not fix the casing
    assert SPEC.validate(body, "#/definitions/OnlineEndpoint") == [
        "$.properties.publicNetworkAccess: 'disabled' is not one of ['Enabled', 'Disabled']"]


# ----------------------------------------------------------------------------- refused up front


@pytest.mark.parametrize("override", ["network.vnet_name=myvnet", "network.subnet_name=mysubnet",
                                      "network.location=japaneast"])
def test_subnet_settings_are_refused_for_a_managed_endpoint(tmp_path, override):
    with pytest.raises(ConfigError) as info:
        api.run(["dry_run=true", f"home={tmp_path / 'home'}", "target=managed_endpoint", "network=vnet", override],
                tmp_path / "out")
    assert override in str(info.value) and "managed network" in str(info.value)
    assert "target=aci" in info.value.hint
    assert "\n" not in str(info.value)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["stage_seconds"]) == {"teardown"}  # refused before the first stage


def test_a_request_timeout_azure_refuses_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        api.run(["dry_run=true", f"home={tmp_path / 'home'}", "target=managed_endpoint",
                 "target.request_timeout=600"], tmp_path / "out")
    assert "target.request_timeout=600" in str(info.value) and "180" in str(info.value)
    assert "at most 180" in info.value.hint


def test_vnet_plan_explains_the_managed_network(tmp_path):
    plan = plan_for(tmp_path, "network=vnet")
    note = actions(plan, "online_endpoints.begin_create_or_update")[0]["note"]
    assert "private endpoint" in note and "managed network" in note and "outbound" in note


# ============================================================================= target=aci: azureml-core (v1)
#
# azureml-core talks to the workspace's Model Management Service (MMS). Its only published
# specification is the 2019-09-30 preview (tests/azure_spec/modelmanagement-2019-09-30.json),
# older than the SDK: the gaps below are where the SDK sends more than that document knows.

V1_SPEC = "modelmanagement-2019-09-30.json"

ENVIRONMENT_GAPS = {
    # Declared by azureml-core's Environment, not by the 2019 ModelEnvironmentDefinition.
    "$.environmentImageRequest.environment.python.condaDependenciesFile: not a property the spec declares":
        "PythonSection.conda_dependencies_file came to azureml-core after 2019; sent as null when unused",
    "$.environmentImageRequest.environment.docker.buildContext: not a property the spec declares":
        "DockerSection.build_context (Docker build contexts) came after 2019; null when unused",
    "$.environmentImageRequest.environment.docker.baseImageRegistry.registryIdentity: "
    "not a property the spec declares":
        "ContainerRegistry.registry_identity (managed-identity pulls) came after 2019; null when unused",
    "$.environmentImageRequest.environment.docker.platform: not a property the spec declares":
        "DockerSection.platform ({os, architecture}) came after 2019",
    "$.environmentImageRequest.environment.databricks: not a property the spec declares":
        "Environment.databricks is serialised by azureml-core but absent from the 2019 ModelEnvironmentDefinition",
    "$.environmentImageRequest.environment.r: not a property the spec declares":
        "Environment.r (R environments) came after 2019; null when unused",
    "$.environmentImageRequest.environment.assetId: not a property the spec declares":
        "Environment.asset_id (registry assets) came after 2019; null when unused",
    # azureml-core serialises every unset optional field as null; the 2019 spec marks none x-nullable.
    "$.environmentImageRequest.environment.version: null is not allowed":
        "null: an environment that is not registered has no version (MMS registers it from this request)",
    "$.environmentImageRequest.environment.python.baseCondaEnvironment: null is not allowed": "null: unset",
    "$.environmentImageRequest.environment.docker.baseDockerfile: null is not allowed":
        "null: the base image is used instead",
    "$.environmentImageRequest.environment.docker.baseImageRegistry.address: null is not allowed":
        "null: the base image is on the public mcr.microsoft.com",
    "$.environmentImageRequest.environment.docker.baseImageRegistry.username: null is not allowed": "null: public",
    "$.environmentImageRequest.environment.docker.baseImageRegistry.password: null is not allowed": "null: public",
    "$.environmentImageRequest.environment.inferencingStackVersion: null is not allowed": "null: unset",
}
SERVICE_GAPS = {
    # The create request's own fields, from azureml-core's ACI payload template.
    "$.cname: null is not allowed": "null: no custom DNS name (the template's default)",
    "$.dnsNameLabel: null is not allowed": "null: Azure picks the DNS label (the template's default)",
    "$.keys.primaryKey: null is not allowed": "null: MMS generates the keys (the template's default)",
    "$.keys.secondaryKey: null is not allowed": "null: MMS generates the keys (the template's default)",
}
PUBLIC_GAPS = {
    "$.location: null is not allowed": "null on a public network: MMS puts the service in the workspace's region",
}
VNET_GAPS = {
    "$.vnetConfiguration: not a property the spec declares":
        "ACI in a customer VNET (seed 004) came to azureml-core after the 2019-09-30 spec, whose "
        "ACIServiceCreateRequest has no vnetConfiguration; the SDK sends {vnetName, subnetName}",
}
PATCH_GAPS = {
    "$[*].value: a string is not of type object":
        "the spec types JsonPatchOperation.value as an object; JSON Patch (RFC 6902) takes any value, and "
        "Webservice.update adds /properties/<key> strings from azureml-core's tracking registry (the git "
        "branch and commit when it runs in a git repository)",
}
ACI_SPEC_GAPS = {**ENVIRONMENT_GAPS, **SERVICE_GAPS, **PUBLIC_GAPS, **VNET_GAPS, **PATCH_GAPS}
"""Every way an ACI request body departs from the v1 spec, with why: none is aideploy's doing."""


def gap_key(error: str) -> str:
    """An error without what varies between runs: the list of known properties, a patch's index and value."""
    error = error.split(" (known: ")[0]
    return re.sub(r"^\$\[\d+\]\.value: '.*' is not of type object$", "$[*].value: a string is not of type object",
                  error)


def v1_template(path: str, service: str) -> str:
    """The spec's path template for a concrete MMS path of ``service``."""
    return path.replace(f"/services/{service}", "/services/{id}")


def v1_spec_errors(plan: dict, service: str) -> set[str]:
    """Every departure from the v1 spec of the plan's MMS requests (actions and roll-back), as :func:`gap_key`.

    Each request's operation must be in the spec (path template and method), with a body exactly
    when the operation takes one. A JSON patch is checked as the spec's array of operations, and
    each replaced property's value against that property in ``ACIServiceCreateRequest``.
    """
    create = SPEC.flatten(V1_SPEC, SPEC.resolve("#/definitions/ACIServiceCreateRequest", V1_SPEC)[2])[0]
    errors: set[str] = set()
    for a in plan["actions"] + plan.get("rollback", []):
        request = a.get("request", {})
        if "service-version" not in request:  # a note or the smoke test's scoring request
            continue
        schema = SPEC.body_schema(V1_SPEC, v1_template(request["path"], service), request["method"])
        assert (schema is None) == ("body" not in request), a
        if schema is None:
            continue
        found = SPEC.validate_schema(request["body"], schema, V1_SPEC)
        if request["method"] == "PATCH":
            for op in request["body"]:
                prop = op["path"].split("/")[1]
                if op["path"] == f"/{prop}" and prop in create:
                    pdoc, pschema = create[prop]
                    found += [e.replace("$", f"$.{prop}", 1) for e in SPEC.validate_schema(op["value"], pschema, pdoc)]
        errors |= {gap_key(e) for e in found}
    return errors


def aci_plan(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "out"
    results = api.run(["dry_run=true", f"home={tmp_path / 'home'}", "target=aci", "deployment_name=digits-svc",
                       *overrides], out)
    assert results["status"] == "ok", results.get("error")
    return json.loads((out / "plan.json").read_text())


def aci_requests(plan: dict, action: str) -> list[dict]:
    return [a["request"] for a in plan["actions"] + plan.get("rollback", []) if a["action"] == action]


VNET = ("network=vnet", "network.location=japaneast")


@pytest.mark.parametrize("mode", ["run", "update", "delete"])
@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth", [True, False])
def test_every_aci_body_validates_against_the_v1_spec_but_the_listed_gaps(tmp_path, mode, network, auth):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    plan = aci_plan(tmp_path, f"mode={mode}", f"target.auth_enabled={str(auth).lower()}",
                    *(VNET if network == "vnet" else ()))
    expected = {"run": {**ENVIRONMENT_GAPS, **SERVICE_GAPS, **(VNET_GAPS if network == "vnet" else PUBLIC_GAPS)},
                "update": ENVIRONMENT_GAPS, "delete": {}}[mode]
    # Equal, not a subset: an unlisted difference fails, and so does a listed one that went away.
    assert v1_spec_errors(plan, "digits-svc") == set(expected)
    assert ("Webservice.get_keys" in [a["action"] for a in plan["actions"]]) is (auth and mode != "delete")


def test_a_patch_adds_the_sdks_tracking_properties_as_strings(tmp_path, monkeypatch):
    """Run inside a git repository, azureml-core adds its git properties to the update: the patch gap."""
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    plan = aci_plan(tmp_path, "mode=update")
    assert v1_spec_errors(plan, "digits-svc") == set(ENVIRONMENT_GAPS) | set(PATCH_GAPS)
    for patch in (r["body"] for r in aci_requests(plan, "Webservice.update")):
        added = {op["path"] for op in patch if op["op"] == "add"}
        assert "/properties/azureml.git.dirty" in added and patch[0]["path"] == "/environmentImageRequest"


def test_aci_requests_are_the_sdks_routes(tmp_path):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    from azureml._model_management._constants import MMS_ROUTE_API_VERSION

    from aideploy.azure_requests import V1_SCOPE, mms_client, mms_request

    plan = aci_plan(tmp_path)
    root = ("/modelmanagement/v1.0/subscriptions/{subscriptionId}/resourceGroups/{resourceGroup}/providers/"
            "Microsoft.MachineLearningServices/workspaces/{workspace}")
    expected = {"AssetsClient.create_asset": ("POST", "/assets"), "Model.register": ("POST", "/models"),
                "Model.deploy": ("POST", "/services"), "Webservice.get_keys": ("POST", "/services/digits-svc/listkeys"),
                "Webservice.delete": ("DELETE", "/services/digits-svc")}
    for action, (method, suffix) in expected.items():
        (request,) = aci_requests(plan, action)
        assert (request["method"], request["path"]) == (method, root + suffix)
        # No api-version query: the service version is the route's.
        assert request["api-version"] is None and request["service-version"] == MMS_ROUTE_API_VERSION
    # The generated client's own templates give the registrations' paths, and they agree with
    # the template of _get_mms_url that the web service requests use.
    client = mms_client()
    assert client.ml_models.register.metadata["url"].format(**V1_SCOPE) == mms_request("POST", "/models")["path"]
    assert client.assets.create.metadata["url"].format(**V1_SCOPE) == mms_request("POST", "/assets")["path"]
    # Every path is one of the spec's, with its method.
    v1 = SPEC.docs[V1_SPEC]["paths"]
    for a in plan["actions"]:
        if "service-version" in a.get("request", {}):
            assert a["request"]["method"].lower() in v1[v1_template(a["request"]["path"], "digits-svc")]


def test_aci_registration_bodies_are_the_generated_clients(tmp_path):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    plan = aci_plan(tmp_path)
    (asset,), (model,) = aci_requests(plan, "AssetsClient.create_asset"), aci_requests(plan, "Model.register")
    register = actions(plan, "Model.register")[0]["settings"]
    assert asset["body"] == {"name": "sklearn_digits",
                             "artifacts": [{"prefix": f"LocalUpload/{{container}}/{Path(register['model_path']).name}"}]}
    assert model["body"] == {"name": "sklearn_digits", "url": "aml://asset/{assetId}", "mimeType": "application/json",
                             "unpack": False, "datasets": [], "kvTags": register["tags"],
                             "description": register["description"]}


def test_aci_create_and_update_carry_the_sdks_environment_image_request(tmp_path, monkeypatch):
    """The environment image request in the plan is what ``InferenceConfig._build_environment_image_request``
    itself builds, with only its two uploads (which need a workspace) standing still."""
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    import azureml.core.model as sdk_model

    from aideploy.azure_requests import V1_UPLOAD
    from aideploy_plugins.target_aci import build_environment, inference_config

    plan = aci_plan(tmp_path, "mode=run", *VNET)
    (create,) = aci_requests(plan, "Model.deploy")
    eir = create["body"]["environmentImageRequest"]
    assert eir["modelIds"] == ["sklearn_digits:{modelVersion}"]
    assert create["body"]["vnetConfiguration"] == {"vnetName": "amlvnet1", "subnetName": "amlsubnet1"}
    assert create["body"]["location"] == "japaneast" and create["body"]["computeType"] == "ACI"

    # The SDK's own function, its uploads replaced by their placeholder results.
    def upload(workspace, dependency, create_tar=False, arcname=None, show_output=False):
        name = "{archive}.tar.gz" if create_tar else Path(dependency).name
        return V1_UPLOAD + name, name

    monkeypatch.setattr(sdk_model, "upload_dependency", upload)
    monkeypatch.setattr(sdk_model, "wrap_execution_script_with_source_directory",
                        lambda source, script, debug: "/nowhere/{driverScript}.py")
    settings = actions(plan, "InferenceConfig")[0]["settings"]
    code = type("Code", (), {"source_dir": Path(settings["source_directory"]), "entry_script": settings["entry_script"],
                             "settings": {"AIDEPLOY_PREPARE_SCHEMES": "none"}})  # what the config sets for aci
    environment = type("Env", (), {"name": "aideploy-env", "conda_file": tmp_path / "out" / "environment.yml"})
    config = inference_config(code, build_environment(environment))
    assert config._build_environment_image_request(None, ["sklearn_digits:{modelVersion}"]) == eir

    update = aci_plan(tmp_path, "mode=update")
    (patch, rollback) = (r["body"] for r in aci_requests(update, "Webservice.update"))
    assert patch[0] == {"op": "replace", "path": "/environmentImageRequest", "value": eir}
    assert rollback[0]["value"]["modelIds"] == ["{previousModelId}"]
    assert {**rollback[0]["value"], "modelIds": eir["modelIds"]} == eir


def test_aci_delete_plan_reads_then_deletes_the_service(tmp_path):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    plan = aci_plan(tmp_path, "mode=delete")
    assert plan["mode"] == "delete"
    assert [a["action"] for a in plan["actions"]] == ["Workspace.get", "Webservice", "Webservice.delete"]
    read, delete = plan["actions"][1]["request"], plan["actions"][2]["request"]
    assert read["method"] == "GET" and read["path"].endswith("/services/digits-svc") and read["query"] == {"expand": "true"}
    assert delete["method"] == "DELETE" and delete["path"] == read["path"] and "body" not in delete
    assert plan["actions"][2]["settings"]["when"].startswith("now: mode=delete")
