"""Azure plans are the SDKs' real requests, valid against Microsoft's REST specs.

``target=managed_endpoint`` (azure-ai-ml): every request is checked against the extract of the
spec at the api-version it carries (tests/azure_spec/, see its README: 2022-02-01-preview for
the endpoint, 2023-04-01-preview for the deployment and environment, 2023-04-01 for code,
2023-08-01-preview for the model, 2024-10-01-preview for the workspace and datastores), with no
exception but the SDK's own deviations listed in ``SDK_DEVIATIONS``. ``target=aci``
(azureml-core) against the 2019-09-30 v1 Model Management spec, except for the listed gaps where
that spec is older than the SDK (at the end of this file).

Each plan action carries the request azure-ai-ml would send (method, path, api-version, body),
built by the installed SDK's own request builders and serialiser, for every combination of
network, auth mode and encryption scheme. Nothing leaves this machine: plans need no workspace
or credential, and the ``no_network`` fixture fails any connection.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from aideploy import api
from aideploy.errors import ConfigError
from aideploy.plan_script import plan_requests
from openapi_check import SPEC_DIR, Spec

# No workspace or credential in the environment, and any connection off this machine fails the test.
pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.usefixtures("no_azure_env", "no_network")]
pytest.importorskip("azure.ai.ml", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")

from test_azure_targets import CREDENTIAL_VARS, WORKSPACE_VARS, no_azure_env, no_network  # noqa: E402,F401

SDK_DEVIATIONS_SEEN_WITH = "1.35.2"
"""The azure-ai-ml version the deviations below were found with (``pip show azure-ai-ml``)."""

SDK_DEVIATIONS = {
    ("code.create_or_update", "$.properties.properties.hash_version: 202208 is not of type string"):
        "azure-ai-ml puts the content-hash version in the code asset's property dictionary as an integer "
        "(Code._to_rest_object: get_content_hash_version()); the 2023-04-01 spec types that dictionary "
        "string -> string. ARM's JSON reader accepts the number; aideploy sends what the SDK builds.",
}
"""Where azure-ai-ml itself departs from the spec of the api-version it sends, not aideploy: (action, error)
and why. Every entry must still occur in a plan (test_every_listed_sdk_deviation_still_occurs)."""

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


def spec_errors(plan: dict, created: dict[str, dict] | None = None) -> list[tuple[str, str]]:
    """(action, error) for every ARM request of the plan (roll-back included) that departs from the spec
    of its api-version.

    A PUT of a path the plan PUT before is an update of what it created; ``created`` gives, by path,
    the bodies of resources that existed before the plan (an update plan's endpoint).
    """
    errors, bodies = [], dict(created or {})
    for action, request in plan_requests(plan):
        if not request.get("api-version"):  # a blob PUT, the smoke test, azureml-core's v1 requests
            continue
        if request["method"] == "PUT" and request["path"] in bodies:
            found = SPEC.check_request(request, bodies[request["path"]])
        else:
            found = SPEC.check_request(request)
        errors += [(action["action"], e) for e in found]
        if request["method"] == "PUT" and "body" in request:
            bodies[request["path"]] = request["body"]
    return errors


def aideploys(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The errors that are not the SDK's own."""
    return [e for e in errors if e not in SDK_DEVIATIONS]


# ----------------------------------------------------------------------------- every combination


@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth_mode", ["key", "aml_token", "aad_token"])
def test_every_managed_request_validates_against_the_spec_of_its_api_version(tmp_path, network, auth_mode):
    plan = plan_for(tmp_path, f"network={network}", f"target.auth_mode={auth_mode}")
    bodies = [a for a in plan["actions"] if "body" in a.get("request", {})]
    assert [a["action"] for a in bodies] == [
        "online_endpoints.begin_create_or_update", "datastores._list_secrets", "code.create_or_update",
        "environments.create_or_update", "models.create_or_update", "online_deployments.begin_create_or_update",
        "online_endpoints.begin_create_or_update"]
    assert aideploys(spec_errors(plan)) == []

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
    assert aideploys(spec_errors(plan)) == []


def test_a_fast_deployments_image_compiles_its_kernels(tmp_path):
    """encryption=fast's environment is a Docker build context: Azure ML's own steps for the conda file
    on the base image, then the kernels compiled into the image; uploaded and registered as the SDK
    does, valid against the spec. A plain deployment keeps the conda file on the base image."""
    import sys

    from aideploy_scoring import fastkernels_aot

    plan = plan_for(tmp_path / "fast", "encryption=fast", "keystore=azure_blob")
    assert aideploys(spec_errors(plan)) == []
    body = actions(plan, "environments.create_or_update")[0]["request"]["body"]["properties"]
    assert "image" not in body and "condaFile" not in body
    assert set(body["build"]) == {"contextUri"}  # dockerfilePath: the spec's default, "Dockerfile"
    assert re.fullmatch(r"https://\{storageAccount\}\.blob\.core\.windows\.net/\{container\}/LocalUpload/"
                        r"[0-9a-f]{64}/image/", body["build"]["contextUri"]), body["build"]["contextUri"]
    uploads = {r["url"].removeprefix(body["build"]["contextUri"]): Path(r["file"])
               for r in actions(plan, "upload for environments")[0]["requests"]}
    assert sorted(uploads) == ["Dockerfile", "environment.yml", "kernels/fastkernels.c", "kernels/fastkernels_aot.py"]
    dockerfile = uploads["Dockerfile"].read_text()
    assert dockerfile.splitlines()[3] == "FROM mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1"
    assert "conda env create -p /azureml-envs/aideploy -f /aideploy/environment.yml" in dockerfile
    assert "python /aideploy/kernels-src/fastkernels_aot.py --portable" in dockerfile
    assert "ENV AIDEPLOY_KERNEL_CACHE=/aideploy/kernels" in dockerfile
    assert uploads["environment.yml"].read_bytes() == (uploads["Dockerfile"].parent.parent / "environment.yml").read_bytes()
    # The image's step, from the context's copy: it makes the builds the workers' own copy looks for.
    cache = tmp_path / "kernels"
    done = subprocess.run([sys.executable, str(uploads["kernels/fastkernels_aot.py"]), "--portable"],
                          env={**__import__("os").environ, fastkernels_aot.CACHE_ENV: str(cache)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        fastkernels_aot.build_key(name) for name, _, _ in fastkernels_aot.PORTABLE)

    plain = actions(plan_for(tmp_path / "plain"), "environments.create_or_update")[0]["request"]["body"]["properties"]
    assert plain["image"] == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1" and "build" not in plain


def test_request_settings_follow_the_timeout_and_workers(tmp_path):
    plan = plan_for(tmp_path, "target.request_timeout=120", "target.worker_count=3")
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]["request"]["body"]["properties"]
    assert deployment["requestSettings"] == {"maxConcurrentRequestsPerInstance": 3, "requestTimeout": "PT2M"}
    assert deployment["environmentVariables"] == {"WORKER_COUNT": "3", "AIDEPLOY_PREPARE_SCHEMES": "none"}
    assert aideploys(spec_errors(plan)) == []


# ----------------------------------------------------------------------------- the requests themselves

OPERATIONS = {
    "workspaces.get": "Workspaces_Get",
    "online_endpoints.begin_create_or_update": "OnlineEndpoints_CreateOrUpdate",
    "datastores.get_default": "Datastores_List",
    "datastores._list_secrets": "Datastores_ListSecrets",
    "code.create_or_update": "CodeVersions_CreateOrUpdate",
    "environments.create_or_update": "EnvironmentVersions_CreateOrUpdate",
    "models.create_or_update": "ModelVersions_CreateOrUpdate",
    "online_deployments.begin_create_or_update": "OnlineDeployments_CreateOrUpdate",
    "online_endpoints.get_keys": "OnlineEndpoints_ListKeys",
    "online_endpoints.begin_delete": "OnlineEndpoints_Delete",
}
"""The spec's operation each plan action's request is (found by path template and method in its api-version)."""


def test_requests_use_the_installed_sdks_paths_and_api_versions(tmp_path):
    from azure.ai.ml._restclient.arm_ml_service.operations import _operations as generated

    from aideploy.azure_requests import plan_client

    plan = plan_for(tmp_path)
    requests = {a["action"]: a["request"] for a in plan["actions"] if "api-version" in a.get("request", {})}
    client = plan_client()
    # The api-version each operation group of MLClient is pinned to in this SDK.
    assert requests["online_endpoints.begin_create_or_update"]["api-version"] == \
        client.online_endpoints._online_operation._config.api_version
    assert requests["online_deployments.begin_create_or_update"]["api-version"] == \
        client.online_deployments._online_deployment._config.api_version
    assert requests["models.create_or_update"]["api-version"] == \
        client.models._model_versions_operation._config.api_version
    for request in requests.values():
        assert request["path"].startswith(WORKSPACE_PREFIX)
    # Each request is the operation of the spec at its api-version it should be: template and method.
    assert {action: SPEC.operation(request)[2]["operationId"] for action, request in requests.items()} == OPERATIONS
    # And the generated builders' own template (not a copy of it) produced them.
    assert "onlineEndpoints/{endpointName}/deployments/{deploymentName}" in \
        open(generated.__file__).read()


def test_long_running_requests_are_the_specs_and_say_the_header_it_names(variant_plans):
    """A request is planned as long-running exactly when its operation is, and polled by a header its
    202/201 answer carries in the spec (the Location of a DELETE, the Azure-AsyncOperation of a PUT)."""
    seen = set()
    for variant in MANAGED_VARIANTS:
        for _, request in plan_requests(variant_plans[variant][0]):
            if request.get("api-version"):
                _, _, operation, _ = SPEC.operation(request)
                assert bool(operation.get("x-ms-long-running-operation")) == ("long_running" in request), request
                if "long_running" in request:
                    headers = {h for r in operation["responses"].values() for h in r.get("headers", {})}
                    assert request["long_running"]["header"] in headers, (operation["operationId"], headers)
                    seen.add(operation["operationId"])
    assert seen == {"OnlineEndpoints_CreateOrUpdate", "OnlineDeployments_CreateOrUpdate", "OnlineEndpoints_Delete",
                    "OnlineDeployments_Delete"}


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
    endpoint = actions(plan, "online_endpoints.begin_create_or_update")[0]
    errors = SPEC.check_request({**endpoint["request"], "body": endpoint["settings"]})
    assert "$: required property 'location' is missing" in errors
    assert "$.name: read-only, a request must not send it" in errors
    assert "$.properties: required property 'authMode' is missing" in errors
    deployment = actions(plan, "online_deployments.begin_create_or_update")[0]
    assert "$.properties: required property 'endpointComputeType' is missing" in \
        SPEC.check_request({**deployment["request"], "body": deployment["settings"]})


def test_the_sdk_passes_lowercase_network_access_through_and_the_spec_refuses_it():
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from aideploy.azure_requests import plan_client, sdk_request

    request = sdk_request("online_endpoints_create_or_update", plan_client().online_endpoints._online_operation,
                          ManagedOnlineEndpoint(name="ep-1", auth_mode="key", public_network_access="disabled")
                          ._to_rest_online_endpoint(location="japaneast"), endpoint_name="ep-1")
    assert request["body"]["properties"]["publicNetworkAccess"] == "disabled"  # the SDK does not fix the casing
    assert SPEC.check_request(request) == [
        "$.properties.publicNetworkAccess: 'disabled' is not one of ['Enabled', 'Disabled'] (casing: 'Disabled')"]


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

V1_SPEC = SPEC.key(SPEC_DIR / "modelmanagement-2019-09-30.json")

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
    return re.sub(r"^\$\[\d+\]\.value: (['\"]).*\1 is not of type object$", "$[*].value: a string is not of type object",
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


VNET = ("network=vnet", "network.vnet_name=amlvnet1", "network.subnet_name=amlsubnet1", "network.location=japaneast")


@pytest.mark.parametrize("mode", ["run", "update", "delete"])
@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth", [True, False])
def test_every_aci_body_validates_against_the_v1_spec_but_the_listed_gaps(tmp_path, mode, network, auth):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    plan = aci_plan(tmp_path, f"mode={mode}", f"target.auth_enabled={str(auth).lower()}",
                    *(VNET if network == "vnet" else ()))
    expected = {"run": {**ENVIRONMENT_GAPS, **SERVICE_GAPS, **(VNET_GAPS if network == "vnet" else PUBLIC_GAPS)},
                "update": {**ENVIRONMENT_GAPS, **PATCH_GAPS}, "delete": {}}[mode]
    # Equal, not a subset: an unlisted difference fails, and so does a listed one that went away.
    assert v1_spec_errors(plan, "digits-svc") == set(expected)
    assert ("Webservice.get_keys" in [a["action"] for a in plan["actions"]]) is (auth and mode != "delete")


@pytest.mark.parametrize("mode", ["run", "update"])
def test_no_git_state_of_the_working_directory_goes_to_azure(tmp_path, monkeypatch, mode):
    """Run inside a git repository, azureml-core would add ``azureml.git.*`` (the checkout's local path,
    branch, commit, dirty flag) to the service it creates or updates; only ``target.properties`` go."""
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    plan = aci_plan(tmp_path, f"mode={mode}", "+target.properties.owner=ml-team")
    text = json.dumps([r["body"] for a in ("Model.deploy", "Webservice.update") for r in aci_requests(plan, a)])
    assert "azureml.git" not in text and str(repo) not in text
    properties = [r["body"]["properties"] for r in aci_requests(plan, "Model.deploy")] or \
        [{op["path"].rsplit("/", 1)[1]: op["value"] for op in r["body"] if op["path"].startswith("/properties/")}
         for r in aci_requests(plan, "Webservice.update")[1:2]]
    assert properties == [{"owner": "ml-team"}]


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
    (patch, metadata, rollback) = (r["body"] for r in aci_requests(update, "Webservice.update"))
    assert [op["path"] for op in metadata] == ["/kvTags", "/description"]  # after the smoke test, never undone
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


# ============================================================================= every plan variant
#
# One plan per variant (target x network x scheme, update, delete), made once for the module.

PLAN_VARIANTS = {
    f"{target}-{network}-{scheme}": (f"target={target}", f"encryption={scheme}", "keystore=azure_blob",
                                     *(VNET if network == "vnet" and target == "aci" else
                                       ("network=vnet",) if network == "vnet" else ()))
    for target in ("aci", "managed_endpoint") for network in ("public", "vnet") for scheme in ("none", "fast")
}
PLAN_VARIANTS.update({f"{target}-{mode}": (f"target={target}", f"mode={mode}", "deployment_name=digits-svc")
                      for target in ("aci", "managed_endpoint") for mode in ("update", "delete")})
MLP_MODEL = "model.path={mlp}"
"""A ReLU MLP under encryption=fast (the fixture writes it), its key store an account given by URL, so the
service counts its limits in a blob container: both of a managed endpoint's secrets."""
PLAN_VARIANTS.update({f"{target}-{network}-mlp": (f"target={target}", "encryption=fast", "keystore=azure_blob",
                                                  "model=sklearn_pickle", MLP_MODEL, "deployment_name=digits-svc",
                                                  *(VNET if network == "vnet" and target == "aci" else
                                                    ("network=vnet",) if network == "vnet" else ()))
                      for target in ("aci", "managed_endpoint") for network in ("public", "vnet")})
PLAN_VARIANTS["managed_endpoint-mlp-update"] = (*PLAN_VARIANTS["managed_endpoint-public-mlp"], "mode=update")
KEY_STORE = "https://acct.blob.core.windows.net"


@pytest.fixture(scope="module")
def variant_plans(tmp_path_factory):
    """Every variant's plan.json and plan.sh, made once (no workspace, credential or network needed)."""
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
    made = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in (*WORKSPACE_VARS, *CREDENTIAL_VARS):
            patch.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("variants")
        patch.chdir(root)
        mlp = write_mlp(root / "mlp.pkl")
        for variant, overrides in PLAN_VARIANTS.items():
            out = root / variant
            patch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
            if "mlp" in variant:
                patch.setenv("AZURE_STORAGE_ACCOUNT_URL", KEY_STORE)
            else:
                patch.delenv("AZURE_STORAGE_ACCOUNT_URL", raising=False)
            results = api.run(["dry_run=true", f"home={root / 'home'}",
                               *(o.replace("{mlp}", str(mlp)) for o in overrides)], out)
            assert results["status"] == "ok", (variant, results.get("error"))
            made[variant] = (json.loads((out / "plan.json").read_text()), out / "plan.sh")
            made.setdefault("results", {})[variant] = results
    made["root"] = root
    return made


MANAGED_VARIANTS = sorted(v for v in PLAN_VARIANTS if v.startswith("managed_endpoint"))


def test_results_say_where_an_azure_deployment_gets_its_kernels(variant_plans):
    """managed_endpoint: compiled in the image build; aci: in the first worker's init(); plain: none."""
    results = variant_plans["results"]
    for network in ("public", "vnet"):
        assert results[f"managed_endpoint-{network}-fast"]["kernels"]["where"] == "image"
        assert results[f"aci-{network}-fast"]["kernels"]["where"] == "init"
        assert "kernels" not in results[f"aci-{network}-none"]


def write_mlp(path: Path) -> Path:
    """A small ReLU MLP on the digits the plans' data stage loads."""
    import warnings

    import joblib
    from sklearn.neural_network import MLPClassifier

    from aideploy.datasets import digits_split

    X_train, _, y_train, _ = digits_split(0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: the plan needs its shape, not its accuracy
        joblib.dump(MLPClassifier((16,), max_iter=20, random_state=0).fit(X_train, y_train), path)
    return path


def endpoint_create(plan: dict) -> dict:
    """The request that creates a run plan's endpoint."""
    return actions(plan, "online_endpoints.begin_create_or_update")[0]["request"]


def created_before(variant_plans, variant: str) -> dict[str, dict]:
    """What an update plan's endpoint was created with: the run plan of the same settings' endpoint body."""
    if not variant.endswith("-update"):
        return {}
    plan = variant_plans[variant][0]
    endpoint = actions(plan, "online_endpoints.get")[0]["request"]["path"]
    return {endpoint: endpoint_create(variant_plans["managed_endpoint-public-none"][0])["body"]}


@pytest.mark.parametrize("variant", MANAGED_VARIANTS)
def test_every_managed_plan_variant_passes_the_spec_check(variant_plans, variant):
    """Every ARM request of every plan (roll-back included) against the spec of its api-version; an update
    plan's endpoint PUTs as updates of the endpoint as a run of the same settings created it."""
    plan = variant_plans[variant][0]
    assert aideploys(spec_errors(plan, created_before(variant_plans, variant))) == []
    checked = {r["api-version"] for _, r in plan_requests(plan) if r.get("api-version")}
    secrets = {"2024-11-01", "2022-04-01", "2025-07-01"} if variant.endswith("-mlp") else set()  # Key Vault, roles
    assert checked == ({"2022-02-01-preview"} if variant.endswith("-delete") else
                       {"2022-02-01-preview", "2023-04-01-preview", "2023-04-01", "2023-08-01-preview",
                        "2024-10-01-preview", *secrets})


def test_every_listed_sdk_deviation_still_occurs(variant_plans):
    """The allow-list cannot rot: an entry the plans no longer show fails, and so does another SDK version."""
    found = {e for v in MANAGED_VARIANTS for e in spec_errors(variant_plans[v][0], created_before(variant_plans, v))}
    assert set(SDK_DEVIATIONS) <= found, set(SDK_DEVIATIONS) - found
    assert version("azure-ai-ml") == SDK_DEVIATIONS_SEEN_WITH, \
        "another azure-ai-ml: check SDK_DEVIATIONS against its plans and record the version"


def test_a_request_whose_api_version_has_no_extract_is_an_error(variant_plans):
    request = endpoint_create(variant_plans["managed_endpoint-public-none"][0])
    assert SPEC.check_request(request) == []
    (error,) = SPEC.check_request({**request, "api-version": "2026-07-01"})
    assert "no extract of api-version 2026-07-01" in error
    (error,) = SPEC.check_request({**request, "path": request["path"] + "/regenerateKeys"})
    assert "no such operation in the 2022-02-01-preview extract" in error


def test_path_query_and_body_are_the_operations(variant_plans):
    """Beyond the body: a path name its pattern refuses, a query parameter the operation does not have or of
    the wrong type, a body sent to an operation that takes none."""
    plan = variant_plans["managed_endpoint-public-none"][0]
    endpoint, listing, workspace = (actions(plan, name)[0]["request"] for name in
                                    ("online_endpoints.begin_create_or_update", "datastores.get_default",
                                     "workspaces.get"))
    bad_name = endpoint["path"].rsplit("/", 1)[0] + "/-ep"
    (error,) = SPEC.check_request({**endpoint, "path": bad_name})
    assert error.startswith("path endpointName: '-ep' does not match '^[a-zA-Z0-9]")
    assert listing["query"]["isDefault"] == "true" and SPEC.check_request(listing) == []
    assert SPEC.check_request({**listing, "query": {"isDefault": "True"}}) == [
        "query isDefault: 'True' is not a boolean"]
    (error,) = SPEC.check_request({**listing, "query": {"default": "true"}})
    assert error.startswith("query default: not a parameter of Datastores_List")
    assert SPEC.check_request({**workspace, "body": {}}) == ["$: Workspaces_Get takes no body"]


def _set(body: dict, path: str, value) -> dict:
    """A copy of ``body`` with ``value`` at the dotted ``path``."""
    changed = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return changed


BREAKING = {
    # api-version: (action, which of its requests, dotted path, value, the error the spec of that version gives)
    "2022-02-01-preview": ("online_endpoints.begin_create_or_update", 1, "location", "westeurope",
                           "$.location: x-ms-mutability ['read', 'create'] does not allow it on update "
                           "(created with '{workspaceLocation}')"),
    "2023-04-01-preview": ("online_deployments.begin_create_or_update", 0, "properties.startupProbe",
                           {"initialDelay": "PT10S"}, "$.properties.startupProbe: not a property the spec declares"),
    "2023-04-01": ("code.create_or_update", 0, "properties.autoDeleteSetting", {"condition": "CreatedGreaterThan"},
                   "$.properties.autoDeleteSetting: not a property the spec declares"),
    "2023-08-01-preview": ("models.create_or_update", 0, "properties.provisioningState", "Succeeded",
                           "$.properties.provisioningState: read-only, a request must not send it"),
    "2024-10-01-preview": ("datastores._list_secrets", 0, "expireAfterHours", "1",
                           "$.expireAfterHours: '1' is not an integer"),
}
"""For each extract, a real plan body changed to break one rule of that version, and the error expected:
a create-only property changed in an update, a property the version does not have (where
additionalProperties is false; both exist in later versions), a read-only property, a wrong type."""


@pytest.mark.parametrize("api_version", sorted(BREAKING))
def test_a_real_body_breaking_a_rule_of_its_version_is_caught(variant_plans, api_version):
    action, index, path, value, expected = BREAKING[api_version]
    plan = variant_plans["managed_endpoint-public-none"][0]
    request = actions(plan, action)[index]["request"]
    assert request["api-version"] == api_version
    existing = [endpoint_create(plan)["body"]] if index else []  # the second endpoint PUT updates the first

    def check(body):
        return SPEC.check_request({**request, "body": body}, *existing)

    assert [e for e in check(request["body"]) if (action, e) not in SDK_DEVIATIONS] == []
    errors = check(_set(request["body"], path, value))
    assert [e.split(" (known: ")[0] for e in errors if (action, e) not in SDK_DEVIATIONS] == [expected]


def test_the_checker_picks_the_extract_by_api_version(variant_plans):
    """The same addition is refused by the version that lacks it and passed by the version that has it:
    autoDeleteSetting came to AssetBase after 2023-04-01 (code) and is there at 2023-04-01-preview
    (environment) and 2023-08-01-preview (model)."""
    plan = variant_plans["managed_endpoint-public-none"][0]
    setting = {"condition": "CreatedGreaterThan", "value": "30d"}
    verdicts = {}
    for action in ("code.create_or_update", "environments.create_or_update", "models.create_or_update"):
        request = actions(plan, action)[0]["request"]
        body = _set(request["body"], "properties.autoDeleteSetting", setting)
        errors = [e for e in SPEC.check_request({**request, "body": body}) if (action, e) not in SDK_DEVIATIONS]
        verdicts[request["api-version"]] = [e.split(" (known: ")[0] for e in errors]
    assert verdicts == {"2023-04-01": ["$.properties.autoDeleteSetting: not a property the spec declares"],
                        "2023-04-01-preview": [], "2023-08-01-preview": []}


@pytest.mark.parametrize("variant", sorted(PLAN_VARIANTS))
def test_plan_sh_what_if_names_every_request_of_the_plan_in_order(variant_plans, variant):
    from aideploy.plan_script import plan_requests, request_url

    plan, script = variant_plans[variant]
    proc = subprocess.run(["bash", str(script), "--what-if"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})  # no az on the PATH: what-if sends nothing
    assert proc.returncode == 0, proc.stderr
    printed = [line.split("   # ")[0] for line in proc.stdout.splitlines()]
    expected = [f"{request['method']} {request_url(request)}" for _, request in plan_requests(plan)]
    assert printed == expected
    assert len(expected) == sum(("request" in a) + len(a.get("requests", []))
                                for a in plan["actions"] + plan.get("rollback", []))


@pytest.mark.parametrize("variant", sorted(PLAN_VARIANTS))
def test_no_plan_carries_what_the_config_did_not_say(variant_plans, variant):
    """No seed leftover (MNIST, amlvnet1 unless given), no example variable, and no local path or git state
    in anything sent to Azure (a blob PUT names the local file it uploads, and only there)."""
    plan, _ = variant_plans[variant]
    text = json.dumps(plan)
    assert "MNIST" not in text and "EXAMPLE_" not in text and "azureml.git" not in text
    assert ("amlvnet1" in text) is (variant.startswith("aci-vnet"))  # only where the config names it
    from aideploy.plan_script import plan_requests

    sent = json.dumps([{k: v for k, v in request.items() if k != "file"} for _, request in plan_requests(plan)])
    for local in (str(Path.home()), str(variant_plans["root"]), str(Path(__file__).parents[1])):
        assert local not in sent, local


def test_a_managed_deployment_below_three_instances_gets_an_sla_note(variant_plans, tmp_path):
    plan, _ = variant_plans["managed_endpoint-public-none"]
    (deployment,) = actions(plan, "online_deployments.begin_create_or_update")
    assert "SLA" in deployment["sla"] and "target.instance_count=3" in deployment["sla"]
    assert "sla" not in actions(plan_for(tmp_path, "target.instance_count=3"),
                                "online_deployments.begin_create_or_update")[0]


def test_managed_delete_is_planned_as_a_delete_listing_what_this_home_registered(tmp_path):
    from aideploy.azure_workspace import record_registrations

    plan = plan_for(tmp_path, "mode=delete", "deployment_name=digits-ep")
    assert plan["mode"] == "delete"
    assert [a["action"] for a in plan["actions"]] == ["MLClient", "online_endpoints.begin_delete", "registrations"]
    delete = plan["actions"][1]["request"]
    assert delete["method"] == "DELETE" and delete["path"].endswith("/onlineEndpoints/digits-ep")
    assert delete["long_running"]["header"] == "Location" and "404" in delete["long_running"]["plan.sh"]
    assert not [a for a in plan["actions"] if "body" in a.get("request", {})]  # nothing is created

    registered = [{"kind": "code", "name": "c0de", "version": "1"}, {"kind": "model", "name": "m0del", "version": "1"}]
    record_registrations(tmp_path / "home", "digits-ep", registered)
    kept = plan_for(tmp_path, "mode=delete", "deployment_name=digits-ep")["actions"][2:]
    assert [a["settings"] for a in kept] == registered
    assert all("request" not in a and "delete_registrations=true" in a["note"] for a in kept)
    deleted = plan_for(tmp_path, "mode=delete", "deployment_name=digits-ep", "target.delete_registrations=true")
    requests = [a["request"] for a in deleted["actions"][2:]]
    assert [r["method"] for r in requests] == ["DELETE", "DELETE"]
    assert requests[0]["path"].endswith("/codes/c0de/versions/1") and requests[1]["path"].endswith("/models/m0del/versions/1")
    # The asset versions' DELETEs are their spec's operations at the api-versions they carry.
    assert [SPEC.operation(r)[2]["operationId"] for r in requests] == ["CodeVersions_Delete", "ModelVersions_Delete"]
    assert spec_errors(deleted) == []


def test_the_extracts_are_what_extract_py_cuts(tmp_path):
    """The committed extracts are extract.py's output and closed under $ref: cut again from themselves, they
    come out unchanged (a hand edit fails, and so does a definition an operation reaches that is missing)."""
    import importlib.util

    module = importlib.util.spec_from_file_location("extract", SPEC_DIR / "extract.py")
    extract = importlib.util.module_from_spec(module)
    module.loader.exec_module(extract)
    committed = {}
    for file in SPEC_DIR.rglob("*.json"):
        doc = json.loads(file.read_text(encoding="utf-8"))
        if file.relative_to(SPEC_DIR) == extract.out_path(doc["x-extracted-from"]["path"]):  # not the v1 document
            committed[doc["x-extracted-from"]["path"]] = doc
            (tmp_path / doc["x-extracted-from"]["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / doc["x-extracted-from"]["path"]).write_text(json.dumps(doc), encoding="utf-8")
    assert len(committed) == 15
    assert extract.extract(tmp_path) == committed


# ============================================================================= the checker's rules
#
# Each rule of tests/openapi_check.py, given a body that breaks it: the checker must say so.

RULES_DOC = {"definitions": {
    "Closed": {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
    "Declared": {"type": "object", "properties": {"a": {"type": "string"}}},
    "State": {"type": "string", "readOnly": True, "enum": ["Running", "Done"]},
    "Resource": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 5},
        "state": {"$ref": "#/definitions/State"},
        "id": {"type": "string", "readOnly": True},
        "kind": {"type": "string", "x-ms-mutability": ["read", "create"]},
        "zone": {"type": "string", "x-ms-mutability": ["read"]},
        "access": {"type": "string", "enum": ["Enabled", "Disabled"],
                   "x-ms-enum": {"name": "Access", "modelAsString": False}},
        "sku": {"type": "string", "enum": ["Basic", "Premium"], "x-ms-enum": {"name": "Sku", "modelAsString": True}},
        "created": {"type": "string", "format": "date-time"},
        "timeout": {"type": "string", "format": "duration"},
        "tenant": {"type": "string", "format": "uuid"},
        "url": {"type": "string", "format": "uri"},
        "codeId": {"type": "string", "format": "arm-id"},
        "count": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        "items": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}}},
}}
GOOD = {"name": "abcd", "kind": "k", "access": "Enabled", "sku": "Standard", "created": "2026-07-01T10:00:00Z",
        "timeout": "PT5S", "tenant": "0d7a3b1c-5e2f-4a6b-9c8d-7e6f5a4b3c2d", "url": "https://example.org/x",
        "codeId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w/"
                  "codes/c/versions/1", "count": 10, "ratio": 0.5, "items": ["x"]}


def rule_errors(body: dict, ref: str = "Resource", operation: str = "create", **existing) -> list[str]:
    return Spec(None, docs={"rules.json": RULES_DOC}).validate(body, f"#/definitions/{ref}", "rules.json", operation,
                                                              **existing)


def test_a_body_that_keeps_every_rule_passes():
    assert rule_errors(GOOD) == []  # the extensible enum takes "Standard"; the closed one would not


@pytest.mark.parametrize("ref,body,expected", [
    ("Closed", {"a": "x", "b": 1}, "$.b: not a property the spec declares"),  # additionalProperties: false
    ("Declared", {"b": 1}, "$.b: not a property the spec declares"),  # declared properties, none other
    ("Resource", {**GOOD, "id": "x"}, "$.id: read-only"),
    ("Resource", {**GOOD, "state": "Done"}, "$.state: read-only"),  # readOnly on the referenced definition
    ("Resource", {**GOOD, "zone": "1"}, "$.zone: x-ms-mutability ['read'] does not allow it on create"),
    ("Resource", {k: v for k, v in GOOD.items() if k != "name"}, "$: required property 'name' is missing"),
    ("Resource", {**GOOD, "access": "Maybe"}, "$.access: 'Maybe' is not one of ['Enabled', 'Disabled']"),
    ("Resource", {**GOOD, "access": "enabled"}, "(casing: 'Enabled')"),
    ("Resource", {**GOOD, "sku": "premium"}, "(casing: 'Premium')"),  # extensible, yet casing still counts
    ("Resource", {**GOOD, "created": "2026-07-01 10:00"}, "is not an RFC 3339 date-time"),
    ("Resource", {**GOOD, "timeout": "5s"}, "is not an ISO 8601 duration"),
    ("Resource", {**GOOD, "tenant": "not-a-uuid"}, "is not a uuid"),
    ("Resource", {**GOOD, "url": "example.org/x"}, "is not an absolute URI"),
    ("Resource", {**GOOD, "codeId": "azureml:code:1"}, "is not an ARM resource id"),
    ("Resource", {**GOOD, "count": 0}, "$.count: 0 is below the minimum 1"),
    ("Resource", {**GOOD, "count": 11}, "$.count: 11 is above the maximum 10"),
    ("Resource", {**GOOD, "ratio": 1}, "$.ratio: 1 is above the maximum 1"),  # exclusiveMaximum
    ("Resource", {**GOOD, "name": "ab"}, "is shorter than 3"),
    ("Resource", {**GOOD, "name": "abcdef"}, "is longer than 5"),
    ("Resource", {**GOOD, "items": []}, "$.items: 0 items"),
    ("Resource", {**GOOD, "items": ["a", "b", "c"]}, "$.items: 3 items"),
    ("Resource", {**GOOD, "count": "3"}, "$.count: '3' is not an integer"),
])
def test_each_rule_of_the_checker_refuses_a_body_that_breaks_it(ref, body, expected):
    errors = rule_errors(body, ref)
    assert len(errors) == 1 and expected in errors[0], errors


def test_mutability_follows_the_operation():
    # A patch (no body it was created with): a create-only property is refused outright.
    assert rule_errors({**GOOD, "kind": "k"}, operation="update") == [
        "$.kind: x-ms-mutability ['read', 'create'] does not allow it on update"]
    # A PUT of the whole resource may repeat what it was created with, not change it or add to it.
    assert rule_errors({**GOOD, "kind": "k"}, operation="update", existing=GOOD) == []
    assert rule_errors({**GOOD, "kind": "j"}, operation="update", existing=GOOD) == [
        "$.kind: x-ms-mutability ['read', 'create'] does not allow it on update (created with 'k')"]
    assert rule_errors({**GOOD, "kind": "k"}, operation="update", existing={**GOOD, "kind": None}) == [
        "$.kind: x-ms-mutability ['read', 'create'] does not allow it on update (created with None)"]
    created = {k: v for k, v in GOOD.items() if k != "kind"}
    assert rule_errors({**GOOD, "kind": "k"}, operation="update", existing=created) == [
        "$.kind: x-ms-mutability ['read', 'create'] does not allow it on update (created with nothing)"]


# ============================================================================= encrypted MLPs: the service's secrets
#
# encryption=fast with an MLP needs one round-token secret for every worker and instance, and a service that
# counts its limits in a blob container needs that account's key. On a managed endpoint both live in Key Vault,
# readable by the endpoint's identity alone; an ACI service (one container, no managed identity) makes its own.

SECRET_SETTINGS = {"AIDEPLOY_MLP_TOKEN_SECRET": "digits-svc-mlp-token-secret",
                   "AIDEPLOY_LIMITS_STORE_CREDENTIAL": "digits-svc-limits-credential"}


@pytest.mark.parametrize("network", ["public", "vnet"])
def test_a_managed_mlp_plan_keeps_its_secrets_in_key_vault_for_the_endpoints_identity(variant_plans, network):
    from aideploy.azure_secrets import ROLE_ID, role_assignment_name

    plan, _ = variant_plans[f"managed_endpoint-{network}-mlp"]
    order = [a["action"] for a in plan["actions"]]
    # The vault first (it must use Azure RBAC), the endpoint and its identity, the secrets and their roles,
    # and only then the deployment that reads them; its teardown releases them before the endpoint.
    assert order[:9] == ["MLClient", "workspaces.get", "vaults.get", "online_endpoints.begin_create_or_update",
                         "online_endpoints.get", "secrets.create_or_update", "secrets.create_or_update",
                         "role_assignments.create", "role_assignments.create"]
    assert order.index("online_deployments.begin_create_or_update") > 8
    assert order[-5:] == ["role_assignments.delete", "role_assignments.delete", "SecretClient.begin_delete_secret",
                          "SecretClient.begin_delete_secret", "online_endpoints.begin_delete"]
    workspace, vault, endpoint, identity = (plan["actions"][i]["request"] for i in (1, 2, 3, 4))
    assert workspace["captures"]["keyVaultName"] == "properties.keyVault#vaults"
    assert vault["expect"] == {"properties.enableRbacAuthorization": True}
    assert endpoint["body"]["identity"] == {"type": "SystemAssigned"}
    assert identity["captures"] == {"endpointPrincipalId": "identity.principalId"}

    secrets = [a["request"] for a in actions(plan, "secrets.create_or_update")]
    assert [r["path"].rsplit("/", 1)[1] for r in secrets] == list(SECRET_SETTINGS.values())
    assert [r["body"] for r in secrets] == [{"properties": {"value": "{mlpTokenSecret}"}},
                                            {"properties": {"value": "{limitsStoreCredential}"}}]
    assert [r["fills"] for r in secrets] == [{"mlpTokenSecret": {"generate": "hex32"}},
                                             {"limitsStoreCredential": {"env": "AZURE_STORAGE_CONNECTION_STRING"}}]
    for role, secret in zip(actions(plan, "role_assignments.create"), secrets):
        # Scoped to the one secret, for the endpoint's identity, as Key Vault Secrets User.
        assert role["request"]["path"].startswith(secret["path"] + "/providers/Microsoft.Authorization/")
        assert role["request"]["path"].endswith(role_assignment_name("digits-svc", secret["path"].rsplit("/", 1)[1]))
        assert role["request"]["body"]["properties"] == {
            "roleDefinitionId": f"/subscriptions/{{subscriptionId}}/providers/Microsoft.Authorization/roleDefinitions/"
                                f"{ROLE_ID}", "principalId": "{endpointPrincipalId}", "principalType": "ServicePrincipal"}
    (deployment,) = actions(plan, "online_deployments.begin_create_or_update")
    variables = deployment["request"]["body"]["properties"]["environmentVariables"]
    assert variables["AIDEPLOY_KEY_VAULT_URL"] == "https://{keyVaultName}.vault.azure.net"
    assert variables["AIDEPLOY_KEY_VAULT_SECRETS"] == ",".join(f"{k}={v}" for k, v in SECRET_SETTINGS.items())
    assert variables["AIDEPLOY_LIMITS_STORE"] == f"{KEY_STORE}/aideploy-keys-limits"
    assert not set(SECRET_SETTINGS) & set(variables)  # never a plain environment variable
    (delete,) = [r for r in (a["request"] for a in actions(plan, "SecretClient.begin_delete_secret"))
                 if r["path"].endswith("mlp-token-secret")]
    assert delete["host"] == "https://{keyVaultName}.vault.azure.net" and delete["on_error"] == "warn"
    assert SPEC.check_request({**delete, "body": {}}) == ["$: DeleteSecret takes no body"]


def test_an_aci_mlp_plan_keeps_no_secret_anywhere(variant_plans):
    """No managed identity on ACI: its one container makes its own token secret and counts its limits in its
    own directory, so the plan carries no secret and no account key (and the v1 spec's gaps are the same)."""
    for network in ("public", "vnet"):
        plan, _ = variant_plans[f"aci-{network}-mlp"]
        (create,) = aci_requests(plan, "Model.deploy")
        variables = create["body"]["environmentImageRequest"]["environment"]["environmentVariables"]
        assert variables["AIDEPLOY_LIMITS_STORE"] == "server" and variables["AIDEPLOY_KEY_STORE"] == KEY_STORE
        assert not [name for name in variables if "VAULT" in name or name in SECRET_SETTINGS]
        fast = variant_plans[f"aci-{network}-fast"][0]
        assert v1_spec_errors(plan, "digits-svc") == v1_spec_errors(fast, actions(fast, "Model.deploy")[0]["settings"]
                                                                    ["name"])


def test_an_mlp_update_reads_the_endpoints_secrets_and_makes_none(variant_plans):
    plan, _ = variant_plans["managed_endpoint-mlp-update"]
    assert not [a for a in plan["actions"] if a["action"].startswith(("secrets.", "role_assignments."))]
    (deployment,) = actions(plan, "online_deployments.begin_create_or_update")
    assert deployment["request"]["path"].endswith("/deployments/green")
    variables = deployment["request"]["body"]["properties"]["environmentVariables"]
    assert variables["AIDEPLOY_KEY_VAULT_SECRETS"] == ",".join(f"{k}={v}" for k, v in SECRET_SETTINGS.items())
    assert actions(plan, "workspaces.get")[0]["request"]["captures"]["keyVaultName"] == "properties.keyVault#vaults"


def test_a_managed_delete_deletes_the_secrets_this_home_recorded(tmp_path):
    from aideploy.azure_workspace import record_registrations

    record_registrations(tmp_path / "home", "digits-ep", [
        {"kind": "key_vault_secret", "setting": "AIDEPLOY_MLP_TOKEN_SECRET", "name": "digits-ep-mlp-token-secret",
         "vault": None}])
    plan = plan_for(tmp_path, "mode=delete", "deployment_name=digits-ep")
    assert [a["action"] for a in plan["actions"]] == [
        "MLClient", "workspaces.get", "online_endpoints.begin_delete", "role_assignments.delete",
        "SecretClient.begin_delete_secret", "registrations"]
    assert spec_errors(plan) == []
    assert plan["actions"][4]["request"]["path"] == "/secrets/digits-ep-mlp-token-secret"


BREAKING_SECRETS = {
    "2024-11-01": ("secrets.create_or_update", "properties.secretUri", "https://kv/secrets/x",
                   "$.properties.secretUri: read-only, a request must not send it"),
    "2022-04-01": ("role_assignments.create", "properties.principalType", "servicePrincipal",
                   "$.properties.principalType: 'servicePrincipal' is not one of ['User', 'Group', 'ServicePrincipal', "
                   "'ForeignGroup'] (casing: 'ServicePrincipal')"),
}


@pytest.mark.parametrize("api_version", sorted(BREAKING_SECRETS))
def test_a_real_secret_body_breaking_a_rule_of_its_version_is_caught(variant_plans, api_version):
    action, path, value, expected = BREAKING_SECRETS[api_version]
    request = actions(variant_plans["managed_endpoint-public-mlp"][0], action)[0]["request"]
    assert request["api-version"] == api_version and SPEC.check_request(request) == []
    assert SPEC.check_request({**request, "body": _set(request["body"], path, value)}) == [expected]


AZ_STUB = r'''#!/usr/bin/env python3
"""az, as plan.sh calls it: records each call (its argv, and a body file's text and mode) and answers from
ANSWERS by the URL's last path segment; no network."""
import json, os, stat, sys
args = sys.argv[1:]
call = {"argv": args}
if "--body" in args:
    body = args[args.index("--body") + 1]
    if body.startswith("@"):
        call["body_mode"] = oct(stat.S_IMODE(os.stat(body[1:]).st_mode))
        call["body"] = open(body[1:]).read()
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(json.dumps(call) + "\n")
if args[:1] != ["rest"]:
    sys.exit(0)  # az storage blob upload
url = args[args.index("--url") + 1]
if "--query" in args:  # a long-running PUT's poll
    print(os.environ.get("AZ_POLL_STATE", "Succeeded"))
    sys.exit(0)
segment = url.split("?")[0].rstrip("/").rsplit("/", 2)
answers = json.loads(os.environ["AZ_ANSWERS"])
for key in (segment[-1], segment[-2]):
    if key in answers:
        print(json.dumps(answers[key]))
        break
else:
    print("{}")
'''


def run_plan_sh(tmp_path: Path, script: Path, rbac: bool = True,
                poll_state: str = "Succeeded") -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``plan.sh`` sent for real, with an ``az`` that answers as Azure would and records every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "az").write_text(AZ_STUB)
    (bin_dir / "az").chmod(0o755)
    log = tmp_path / "az.log"
    log.unlink(missing_ok=True)
    answers = {
        "ws1": {"location": "japaneast", "properties": {
            "keyVault": "/subscriptions/sub1/resourceGroups/kv-rg/providers/Microsoft.KeyVault/vaults/kv1"}},
        "kv1": {"properties": {"enableRbacAuthorization": rbac}},
        "digits-mlp": {"identity": {"principalId": "0d7a3b1c-5e2f-4a6b-9c8d-7e6f5a4b3c2d"}},
        "datastores": {"value": [{"properties": {"accountName": "acct", "containerName": "blobs"}}]},
    }
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "AZ_LOG": str(log), "AZ_ANSWERS": json.dumps(answers),
           "AZURE_SUBSCRIPTION_ID": "sub1", "AZURE_RESOURCE_GROUP": "rg1", "AZUREML_WORKSPACE_NAME": "ws1",
           "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=acct;"
                                              "AccountKey=QWNjb3VudEtleQ==;EndpointSuffix=core.windows.net",
           "TMPDIR": str(tmp_path), "AZ_POLL_STATE": poll_state}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env=env)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


@pytest.fixture(scope="module")
def serve_mlp_plan(tmp_path_factory):
    """A mode=serve plan of an MLP on a managed endpoint: nothing at teardown, so plan.sh stops at the keys."""
    root = tmp_path_factory.mktemp("serve-mlp")
    with pytest.MonkeyPatch.context() as patch:
        for name in (*WORKSPACE_VARS, *CREDENTIAL_VARS, "AZURE_STORAGE_CONNECTION_STRING"):
            patch.delenv(name, raising=False)
        patch.setenv("AZURE_STORAGE_ACCOUNT_URL", KEY_STORE)
        patch.chdir(root)
        results = api.run(["dry_run=true", f"home={root / 'home'}", "target=managed_endpoint", "mode=serve",
                           "encryption=fast", "keystore=azure_blob", "model=sklearn_pickle",
                           f"model.path={write_mlp(root / 'mlp.pkl')}", "deployment_name=digits-mlp"], root / "out")
    assert results["status"] == "ok", results.get("error")
    return json.loads((root / "out" / "plan.json").read_text()), root / "out" / "plan.sh"


def test_plan_sh_makes_the_secrets_as_it_runs_and_never_puts_one_on_a_command_line(serve_mlp_plan, tmp_path):
    plan, script = serve_mlp_plan
    proc, calls = run_plan_sh(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    sent = [c["argv"][c["argv"].index("--url") + 1] for c in calls
            if c["argv"][:1] == ["rest"] and "--query" not in c["argv"]]  # not the long-running PUTs' polls
    # Every request the plan sends, in order, with what Azure answered filled in: the vault's group and name.
    from aideploy.plan_script import request_url

    filled = {"{subscriptionId}": "sub1", "{resourceGroupName}": "rg1", "{workspaceName}": "ws1",
              "{keyVaultResourceGroup}": "kv-rg", "{keyVaultName}": "kv1"}
    expected = []
    for action, request in plan_requests(plan):
        if "file" in request or str(action.get("settings", {}).get("when", "")).startswith("never"):
            continue  # a blob upload (az storage blob upload), or what mode=serve keeps
        url = request_url(request)
        for placeholder, value in filled.items():
            url = url.replace(placeholder, value)
        expected.append(url)
    assert sent == expected
    assert "https://management.azure.com/subscriptions/sub1/resourceGroups/kv-rg/providers/Microsoft.KeyVault/" \
           "vaults/kv1?api-version=2024-11-01" in sent
    puts = {c["argv"][c["argv"].index("--url") + 1].split("?")[0].rsplit("/", 1)[1]: c for c in calls
            if "--body" in c["argv"]}
    token, credential = puts["digits-mlp-mlp-token-secret"], puts["digits-mlp-limits-credential"]
    assert re.fullmatch(r"[0-9a-f]{64}", json.loads(token["body"])["properties"]["value"])
    assert json.loads(credential["body"])["properties"]["value"] == "QWNjb3VudEtleQ=="
    roles = [json.loads(c["body"]) for c in calls if "roleAssignments" in str(c["argv"]) and "body" in c]
    assert [r["properties"]["principalId"] for r in roles] == ["0d7a3b1c-5e2f-4a6b-9c8d-7e6f5a4b3c2d"] * 2
    (deployment,) = [json.loads(c["body"]) for c in calls if "/deployments/blue" in str(c["argv"]) and "body" in c]
    assert deployment["properties"]["environmentVariables"]["AIDEPLOY_KEY_VAULT_URL"] == "https://kv1.vault.azure.net"
    # The secrets went in private files, never on a command line, and no file is left.
    secrets = (json.loads(token["body"])["properties"]["value"], "QWNjb3VudEtleQ==")
    assert not [c for c in calls if any(s in " ".join(c["argv"]) for s in secrets)]
    assert {c["body_mode"] for c in calls if "body_mode" in c} == {"0o600"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]
    assert not any(s in proc.stdout + proc.stderr for s in secrets)


def test_plan_sh_stops_before_anything_is_made_when_the_vault_uses_access_policies(serve_mlp_plan, tmp_path):
    _, script = serve_mlp_plan
    proc, calls = run_plan_sh(tmp_path, script, rbac=False)
    assert proc.returncode == 1
    assert "properties.enableRbacAuthorization is not true" in proc.stderr and "target.key_vault" in proc.stderr
    assert [c["argv"][c["argv"].index("--method") + 1] for c in calls] == ["GET", "GET"]  # the workspace, the vault


@pytest.mark.parametrize("state", ["Failed", "Canceled"])
def test_plan_sh_stops_at_the_first_long_running_request_that_does_not_succeed(serve_mlp_plan, tmp_path, state):
    _, script = serve_mlp_plan
    proc, calls = run_plan_sh(tmp_path, script, poll_state=state)
    assert proc.returncode == 1 and f"ended {state}" in proc.stderr
    polls = [i for i, c in enumerate(calls) if "--query" in c["argv"]]
    assert len(polls) == 1 and polls[0] == len(calls) - 1  # nothing is sent after the failed one


def test_the_vault_is_read_from_the_workspaces_resource_id():
    """What the deploy stage does with the workspace's ``key_vault`` (plan.sh does it with ``#segment`` captures)."""
    from aideploy.azure_secrets import Vault

    vault = Vault.from_id("/subscriptions/s1/resourceGroups/RG-1/providers/Microsoft.KeyVault/vaults/kv1")
    assert (vault.subscription_id, vault.resource_group, vault.name) == ("s1", "RG-1", "kv1")
    assert vault.url == "https://kv1.vault.azure.net" and vault.secret_id("x").endswith("/vaults/kv1/secrets/x")
    with pytest.raises(ValueError, match="not a Key Vault's resource id"):
        Vault.from_id("/subscriptions/s1/resourceGroups/rg")
