"""``target=managed_endpoint`` plans are the SDK's real requests, valid against Microsoft's REST spec.

Each plan action carries the request azure-ai-ml would send (method, path, api-version, body),
built by the installed SDK's own request builders and serialiser. Every body is checked against
the 2026-07-01 definitions extracted into ``tests/azure_spec/`` (see its README), for every
combination of network, auth mode and encryption scheme. Nothing leaves this machine: plans
need no workspace or credential, and the ``no_network`` fixture fails any connection.
"""

from __future__ import annotations

import json
import re
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
    assert deployment["environmentVariables"] == {"WORKER_COUNT": "3"}
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
