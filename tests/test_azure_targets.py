"""The Azure targets (``target=aci``, ``target=managed_endpoint``) up to the network boundary.

Azure cannot be reached from here. What is tested is everything before it, with the real SDK
classes: the plans (built from the SDKs' own config objects and checked field by field, with
no socket opened), the seeds' deploy configurations out of config alone, the pre-flight checks
(workspace, credential, subnet delegation, the VNET's region) and the missing-extra error.
Where a run would talk to Azure, it runs in an empty network namespace (``unshare -n``): the
SDK's own sign-in fails there at once, and nothing can leave this machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from aideploy import api
from aideploy.azure_workspace import (ACI_DELEGATION, check_subnet_delegation,
                                      find_config_file, resolve_workspace, sdk_error)
from aideploy.errors import ConfigError, PluginError, StageError

# The SDKs' own deprecation notices (ruamel, marshmallow 4) say nothing about aideploy.
pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")]

pytest.importorskip("azureml.core", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")
pytest.importorskip("azure.ai.ml", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")

from azure.mgmt.network.models import Delegation, Subnet  # noqa: E402

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
WORKSPACE_VARS = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
CREDENTIAL_VARS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                   "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD", "IDENTITY_ENDPOINT",
                   "MSI_ENDPOINT")
# Well-formed but fake: they must never appear in anything a run writes.
FAKE_WORKSPACE = {"AZURE_SUBSCRIPTION_ID": "5f3c2a1e-9b7d-4c6e-8a2f-1d0e9c8b7a61",
                  "AZURE_RESOURCE_GROUP": "amlrg-fake", "AZUREML_WORKSPACE_NAME": "amlws-fake"}
FAKE_SECRET = "fake-client-secret-Zq8w"
# Seed 004's VNET, subnet and a region, given as a user gives them: none is a default.
SEED_004_VNET = ("network=vnet", "network.vnet_name=amlvnet1", "network.subnet_name=amlsubnet1",
                 "network.location=japaneast")
RUN_TAGS = {"aideploy_model": "sklearn_digits:1", "model_kind": "sklearn", "aideploy_version": "0.1.0",
            "model_task": "classification", "model_features": "64", "test_accuracy": "0.968889"}
"""The tags a plan of the default run (digits, its LogisticRegression) carries: the model's and the run's."""


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def no_azure_env(monkeypatch, tmp_path):
    """No workspace and no credential in the environment, and a working dir without config.json."""
    for name in (*WORKSPACE_VARS, *CREDENTIAL_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    if find_config_file(tmp_path):
        pytest.skip(f"a stray workspace config file is visible from {tmp_path}: {find_config_file(tmp_path)}")


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to resolve or connect to anything but this machine, and record it."""
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host) -> bool:
        if host in (None, "", "localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def connect(sock, address):
        if isinstance(address, tuple) and not local(address[0]):
            attempts.append(f"connect {address}")
            raise OSError(101, "network unreachable (blocked by the test)")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not local(host):
            attempts.append(f"resolve {host}")
            raise socket.gaierror(-3, "blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"a plan must not touch the network: {attempts}"


def run_plan(tmp_path: Path, *overrides: str) -> tuple[dict, dict, Path]:
    out = tmp_path / "out"
    results = api.run(["dry_run=true", f"home={tmp_path / 'home'}", *overrides], out)
    return results, json.loads((out / "plan.json").read_text()), out


def action(plan: dict, name: str, index: int = 0) -> dict:
    found = [a["settings"] for a in plan["actions"] if a["action"] == name]
    assert len(found) > index, f"no action {name!r} #{index} in {[a['action'] for a in plan['actions']]}"
    return found[index]


def assert_no_stage_ran(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed"
    assert set(results["stage_seconds"]) == {"teardown"}, results["stage_seconds"]
    return results


def assert_no_workspace_values(*texts: str) -> None:
    for text in texts:
        for value in (*FAKE_WORKSPACE.values(), FAKE_SECRET):
            assert value not in text


# ----------------------------------------------------------------------------- plans: aci


@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth", [True, False])
def test_aci_plan_is_the_sdk_payload_field_by_field(tmp_path, no_azure_env, no_network, network, auth):
    net = list(SEED_004_VNET) if network == "vnet" else []
    results, plan, out = run_plan(tmp_path, "target=aci", f"target.auth_enabled={str(auth).lower()}", *net)
    assert results["status"] == "ok"
    assert list(results["stage_seconds"]) == ["data", "model", "scoring", "environment", "plan", "teardown"]
    assert plan["target"] == "aci" and plan["sdk"].startswith("azureml-core ")

    payload = action(plan, "AciWebservice.deploy_configuration")
    name = payload["name"]
    assert name.startswith("aideploy-") and payload["computeType"] == "ACI"
    assert payload["containerResourceRequirements"] == {"cpu": 1, "memoryInGB": 1}
    assert payload["authEnabled"] is auth
    assert payload["kvTags"] == RUN_TAGS
    assert payload["description"].startswith("sklearn_digits version 1 (sklearn, classification) served by aideploy")
    assert payload["keys"] == {"primaryKey": None, "secondaryKey": None}  # Azure generates the keys
    if network == "vnet":
        assert payload["vnetConfiguration"] == {"vnetName": "amlvnet1", "subnetName": "amlsubnet1"}
        assert payload["location"] == "japaneast"
        subnet = action(plan, "NetworkManagementClient.subnets.get")
        assert subnet == {"resource_group_name": "$AZURE_RESOURCE_GROUP", "virtual_network_name": "amlvnet1",
                          "subnet_name": "amlsubnet1", "required_delegation": ACI_DELEGATION}
    else:
        assert "vnetConfiguration" not in payload and payload["location"] is None
        assert "NetworkManagementClient.subnets.get" not in [a["action"] for a in plan["actions"]]

    register = action(plan, "Model.register")
    assert register["model_name"] == "sklearn_digits" and (Path(register["model_path"]) / "aideploy-model.json").is_file()
    assert register["tags"]["aideploy_model"] == "sklearn_digits:1"

    env = action(plan, "Environment.from_conda_specification")
    spec = yaml.safe_load((out / "environment.yml").read_text())
    assert env["name"] == spec["name"] == "aideploy-env"
    assert env["python"]["condaDependencies"] == spec
    assert "azureml-defaults" in spec["dependencies"][-1]["pip"]

    inference = action(plan, "InferenceConfig")
    assert inference["entry_script"] == "aideploy_scoring/score.py" and inference["environment"] == "aideploy-env"
    assert (Path(inference["source_directory"]) / inference["entry_script"]).is_file()

    deploy = action(plan, "Model.deploy")
    assert deploy["name"] == name and deploy["models"] == ["sklearn_digits"] and deploy["overwrite"] is False
    assert deploy["wait_for_deployment"]["show_output"] is True and deploy["get_keys"] is auth
    assert action(plan, "Webservice.delete") == {"name": name, "when": "at teardown"}
    # needs no credential: only env var names, never values
    assert "AZURE_SUBSCRIPTION_ID" in action(plan, "Workspace.get")["from"]


def test_aci_plan_in_serve_mode_keeps_the_service(tmp_path, no_azure_env, no_network):
    _, plan, _ = run_plan(tmp_path, "target=aci", "mode=serve", "deployment_name=digits-svc")
    assert action(plan, "AciWebservice.deploy_configuration")["name"] == "digits-svc"
    assert action(plan, "Webservice.delete")["when"].startswith("never: mode=serve")


# ----------------------------------------------------------------------------- plans: managed endpoint


@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth_mode", ["key", "aml_token"])
def test_managed_plan_is_the_sdk_entities_field_by_field(tmp_path, no_azure_env, no_network, network, auth_mode):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    results, plan, out = run_plan(tmp_path, "target=managed_endpoint", f"network={network}",
                                  f"target.auth_mode={auth_mode}")
    assert results["status"] == "ok"
    assert plan["target"] == "managed_endpoint" and plan["sdk"].startswith("azure-ai-ml ")

    endpoint = action(plan, "online_endpoints.begin_create_or_update")
    name = endpoint["name"]
    assert name.startswith("aideploy-")
    assert endpoint["auth_mode"] == auth_mode
    assert endpoint["public_network_access"] == ("disabled" if network == "vnet" else "enabled")
    assert endpoint["tags"] == RUN_TAGS
    assert endpoint["description"].startswith("sklearn_digits version 1 (sklearn, classification) served by aideploy")

    deployment = action(plan, "online_deployments.begin_create_or_update")
    assert deployment["name"] == "blue" and deployment["endpoint_name"] == name
    assert deployment["type"] == "managed"
    assert deployment["instance_type"] == "Standard_DS3_v2" and deployment["instance_count"] == 1
    assert (Path(deployment["model"]["path"]) / "model.pkl").is_file() and deployment["model"]["type"] == "custom_model"
    code = deployment["code_configuration"]
    assert code["scoring_script"] == "aideploy_scoring/score.py"
    assert (Path(code["code"]) / code["scoring_script"]).is_file()
    assert deployment["environment"]["image"] == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1"
    assert deployment["environment"]["conda_file"] == yaml.safe_load((out / "environment.yml").read_text())
    assert deployment["request_settings"] == {"request_timeout_ms": 60000, "max_concurrent_requests_per_instance": 1}
    assert deployment["environment_variables"] == {"WORKER_COUNT": "1", "AIDEPLOY_PREPARE_SCHEMES": "none"}
    assert deployment["liveness_probe"]["initial_delay"] == deployment["readiness_probe"]["initial_delay"] == 10
    assert deployment["egress_public_network_access"] == ("disabled" if network == "vnet" else "enabled")

    assert action(plan, "online_endpoints.begin_create_or_update", 1) == {"name": name, "traffic": {"blue": 100}}
    assert action(plan, "online_endpoints.get_keys") == {"name": name, "auth_mode": auth_mode}
    assert action(plan, "online_endpoints.begin_delete") == {"name": name, "when": "at teardown"}
    notes = [a.get("note", "") for a in plan["actions"]]
    assert any("private endpoint" in n for n in notes) is (network == "vnet")

    # The plan is the SDK's own YAML form: the SDK loads it back into the same entities.
    (tmp_path / "endpoint.yml").write_text(yaml.safe_dump(endpoint))
    (tmp_path / "deployment.yml").write_text(yaml.safe_dump(deployment))
    loaded = load_online_endpoint(tmp_path / "endpoint.yml")
    assert (loaded.name, loaded.auth_mode, loaded.public_network_access) == \
        (name, auth_mode, endpoint["public_network_access"])
    loaded_dep = load_online_deployment(tmp_path / "deployment.yml")
    assert (loaded_dep.name, loaded_dep.endpoint_name, loaded_dep.instance_type) == ("blue", name, "Standard_DS3_v2")


def test_managed_endpoint_without_auth_is_refused_listing_the_modes():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        api.compose(["target=managed_endpoint", "target.auth_mode=none"])
    message = str(info.value.__cause__)
    assert "key" in message and "aml_token" in message and "aad_token" in message


def test_invalid_service_name_is_refused_before_any_stage(tmp_path, no_azure_env):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        api.run(["target=aci", "dry_run=true", "deployment_name=Bad_Name", f"home={tmp_path / 'home'}"], out)
    assert "Bad_Name" in str(info.value) and "lowercase" in info.value.hint
    assert_no_stage_ran(out)


# ----------------------------------------------------------------------------- the seeds, out of config alone


def test_seed_000_deploy_configuration_comes_out_of_config_alone():
    from azureml.core.webservice import AciWebservice

    from aideploy_plugins.target_aci import create_payload, deploy_configuration

    cfg, _ = api.compose(["target=aci", "target.auth_enabled=false"])
    # seed 000's tags and description are its own: a user who wants them says so
    seed_tags, seed_description = {"data": "MNIST", "method": "sklearn"}, "Encrypted Predict MNIST with sklearn + SEAL"
    ours = deploy_configuration(cfg.target, cfg.network, seed_tags, seed_description)
    # seed 000, verbatim
    seed = AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1, tags={"data": "MNIST", "method": "sklearn"},
                                              description='Encrypted Predict MNIST with sklearn + SEAL')
    assert (ours.cpu_cores, ours.memory_gb, ours.tags, ours.description) == (1, 1, seed_tags, seed_description)
    mine, theirs = create_payload(ours, "svc"), create_payload(seed, "svc")
    assert mine.pop("authEnabled") is False  # the seed left auth unset: off
    assert mine == theirs


def test_seed_004_vnet_deploy_configuration_comes_out_of_config_alone():
    from azureml.core.webservice import AciWebservice

    from aideploy_plugins.target_aci import create_payload, deploy_configuration

    cfg, _ = api.compose(["target=aci", *SEED_004_VNET])
    ours = deploy_configuration(cfg.target, cfg.network, {}, "")
    # seed 004, verbatim
    seed = AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1, location="japaneast",
                                              vnet_name="amlvnet1", subnet_name="amlsubnet1")
    for field in ("cpu_cores", "memory_gb", "location", "vnet_name", "subnet_name"):
        assert getattr(ours, field) == getattr(seed, field), field
    mine, theirs = create_payload(ours, "aciservice"), create_payload(seed, "aciservice")
    for key in ("containerResourceRequirements", "vnetConfiguration", "location", "computeType"):
        assert mine[key] == theirs[key], key


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("given,missing", [((), ("vnet_name", "subnet_name", "location")),
                                           (SEED_004_VNET[1:3], ("location",)),
                                           (SEED_004_VNET[3:], ("vnet_name", "subnet_name"))])
def test_vnet_without_its_names_or_region_is_refused_before_any_stage(tmp_path, no_azure_env, dry_run, given,
                                                                      missing):
    """No VNET or subnet is guessed (seed 004's amlvnet1/amlsubnet1 are not defaults), nor a region."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        api.run(["target=aci", "network=vnet", *given, f"dry_run={str(dry_run).lower()}",
                 f"home={tmp_path / 'home'}"], out)
    assert [k for k in ("vnet_name", "subnet_name", "location") if f"network.{k}" in str(info.value)] == list(missing)
    assert "\n" not in str(info.value) and "westus" in info.value.hint and "network.vnet_name=" in info.value.hint
    assert_no_stage_ran(out)


def test_cpu_cores_refused_by_the_sdk_is_a_config_error():
    from aideploy_plugins.target_aci import deploy_configuration

    cfg, _ = api.compose(["target=aci", "target.cpu_cores=0"])
    with pytest.raises(ConfigError) as info:
        deploy_configuration(cfg.target, cfg.network, {}, "")
    assert "cpu_cores must be positive" in str(info.value)


def test_sdk_calls_match_the_installed_sdks(tmp_path):
    """Every SDK call the deploy, delete and pre-flight paths make binds to the installed SDK's signature."""
    import inspect

    from azure.ai.ml import MLClient
    from azure.ai.ml.operations import OnlineDeploymentOperations, OnlineEndpointOperations
    from azure.mgmt.network.operations import SubnetsOperations
    from azureml.core import Environment, Model, Workspace
    from azureml.core.authentication import TokenAuthentication
    from azureml.core.webservice import Webservice

    from aideploy.artifacts import RegisteredModel
    from aideploy_plugins.target_aci import model_register_args

    def bind(fn, *args, **kwargs):
        inspect.signature(fn).bind(*args, **kwargs)

    cfg, _ = api.compose(["target=aci"])
    model = RegisteredModel("sklearn_digits", 1, tmp_path, "model.pkl", "sklearn", None)
    bind(Model.register, workspace=None, **model_register_args(model, {"aideploy_model": "sklearn_digits:1"}, "a model"))
    bind(Model.deploy, None, "svc", [], inference_config=None, deployment_config=None, overwrite=False)
    bind(Workspace.get, "ws", auth=None, subscription_id="s", resource_group="rg")
    bind(Environment.from_conda_specification, "env", "environment.yml")
    bind(TokenAuthentication, lambda audience: "token")
    bind(Webservice.wait_for_deployment, None, show_output=True, timeout_sec=1.0)
    bind(Webservice.get_logs, None, num_lines=40)
    bind(Webservice.get_keys, None)
    bind(Webservice.delete, None)
    bind(SubnetsOperations.get, None, "rg", "amlvnet1", "amlsubnet1")
    bind(MLClient, None, "s", "rg", "ws", enable_telemetry=False)
    bind(OnlineEndpointOperations.begin_create_or_update, None, None)
    bind(OnlineEndpointOperations.begin_delete, None, name="svc")
    bind(OnlineEndpointOperations.get_keys, None, "svc")
    bind(OnlineEndpointOperations.get, None, "svc")
    bind(OnlineDeploymentOperations.begin_create_or_update, None, None)
    bind(OnlineDeploymentOperations.get_logs, None, name="blue", endpoint_name="svc", lines=40)


# ----------------------------------------------------------------------------- subnet delegation (seed 004)


SUBNET = {"resource_group": "$AZURE_RESOURCE_GROUP", "vnet_name": "amlvnet1", "subnet_name": "amlsubnet1"}


def test_delegated_subnet_passes():
    subnet = Subnet(name="amlsubnet1", address_prefix="10.0.1.0/24",
                    delegations=[Delegation(name="aci", service_name=ACI_DELEGATION)])
    check_subnet_delegation(subnet, **SUBNET)


def test_delegated_subnet_from_the_arm_json_passes():
    # The REST shape azure-mgmt-network deserialises from subnets.get
    subnet = Subnet.deserialize({
        "name": "amlsubnet1", "id": "/subscriptions/x/resourceGroups/amlrg/providers/Microsoft.Network/"
        "virtualNetworks/amlvnet1/subnets/amlsubnet1",
        "properties": {"addressPrefix": "10.0.1.0/24", "delegations": [
            {"name": "aci", "properties": {"serviceName": ACI_DELEGATION}}]}})
    assert subnet.delegations[0].service_name == ACI_DELEGATION
    check_subnet_delegation(subnet, **SUBNET)


@pytest.mark.parametrize("delegations", [None, [], [Delegation(name="web", service_name="Microsoft.Web/serverFarms")]])
def test_undelegated_subnet_is_refused_with_the_az_command(delegations):
    subnet = Subnet(name="amlsubnet1", address_prefix="10.0.1.0/24", delegations=delegations)
    with pytest.raises(ConfigError) as info:
        check_subnet_delegation(subnet, **SUBNET)
    assert "not delegated to Microsoft.ContainerInstance/containerGroups" in str(info.value)
    assert ("az network vnet subnet update -g $AZURE_RESOURCE_GROUP --vnet-name amlvnet1 -n amlsubnet1 "
            "--delegations Microsoft.ContainerInstance/containerGroups") in info.value.hint
    if delegations:
        assert "Microsoft.Web/serverFarms" in str(info.value)


def test_missing_subnet_is_refused_with_the_az_command():
    with pytest.raises(ConfigError) as info:
        check_subnet_delegation(None, **SUBNET, address_range="10.0.1.0/24")
    assert "does not exist" in str(info.value)
    assert ("az network vnet subnet create -g $AZURE_RESOURCE_GROUP --vnet-name amlvnet1 -n amlsubnet1 "
            "--address-prefixes 10.0.1.0/24 --delegations Microsoft.ContainerInstance/containerGroups") \
        in info.value.hint


# ----------------------------------------------------------------------------- which workspace


def ws_cfg(**overrides):
    cfg, _ = api.compose(["target=aci", *(f"target.workspace.{k}={v}" for k, v in overrides.items())])
    return cfg.target.workspace


def test_workspace_from_env_vars_shows_their_names_not_values(tmp_path):
    settings = resolve_workspace(ws_cfg(), "aci", environ=FAKE_WORKSPACE, start=tmp_path)
    assert settings.workspace_name == "amlws-fake" and settings.source.startswith("env vars AZURE_SUBSCRIPTION_ID")
    assert_no_workspace_values(repr(settings), settings.source)
    text = settings.scrub("GET /subscriptions/5F3C2A1E-9B7D-4C6E-8A2F-1D0E9C8B7A61/resourceGroups/amlrg-fake/"
                          "workspaces/amlws-fake failed in amlrg-fake-2")
    assert text == ("GET /subscriptions/$AZURE_SUBSCRIPTION_ID/resourceGroups/$AZURE_RESOURCE_GROUP/"
                    "workspaces/$AZUREML_WORKSPACE_NAME failed in amlrg-fake-2")


def test_workspace_from_a_found_config_json(tmp_path):
    (tmp_path / ".azureml").mkdir()
    config = tmp_path / ".azureml" / "config.json"
    config.write_text(json.dumps({"subscription_id": FAKE_WORKSPACE["AZURE_SUBSCRIPTION_ID"],
                                  "resource_group": "amlrg-fake", "workspace_name": "amlws-fake"}))
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    partial = {"AZURE_SUBSCRIPTION_ID": "only-this-one"}  # incomplete env vars: the file is used
    settings = resolve_workspace(ws_cfg(), "aci", environ=partial, start=tmp_path / "sub" / "dir")
    assert settings.resource_group == "amlrg-fake" and str(config) in settings.source
    sdk = sdk_error(RuntimeError("workspace amlws-fake not found"), "opening", settings)
    assert isinstance(sdk, StageError) and "amlws-fake" not in str(sdk) and "workspace_name in" in str(sdk)


def test_explicit_config_file_wins_and_must_exist(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_workspace(ws_cfg(config_file=tmp_path / "nope.json"), "aci", environ=FAKE_WORKSPACE)
    assert "nope.json does not exist" in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"subscription_id": "x"}))
    with pytest.raises(ConfigError) as info:
        resolve_workspace(ws_cfg(config_file=bad), "aci", environ=FAKE_WORKSPACE)
    assert "lacks resource_group, workspace_name" in str(info.value)


def test_malformed_credential_settings_are_a_config_error(monkeypatch):
    from aideploy.azure_workspace import credential

    monkeypatch.setenv("AZURE_TENANT_ID", "not a tenant!")
    monkeypatch.setenv("AZURE_CLIENT_ID", "x")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", FAKE_SECRET)
    with pytest.raises(ConfigError) as info:  # refused when built, before any request
        credential("aci")
    assert "credential settings are invalid" in str(info.value) and FAKE_SECRET not in str(info.value)
    assert "AZURE_TENANT_ID" in info.value.hint


@pytest.mark.parametrize("target", ["aci", "managed_endpoint"])
def test_missing_workspace_fails_before_any_stage(tmp_path, no_azure_env, target):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        api.run([f"target={target}", f"home={tmp_path / 'home'}"], out)
    assert "no Azure ML workspace is configured" in str(info.value)
    assert all(name in str(info.value) for name in WORKSPACE_VARS)
    assert "config.json" in info.value.hint
    assert_no_stage_ran(out)
    assert not (tmp_path / "home" / "models").exists()  # no model was trained


def test_delete_without_workspace_is_a_clear_error(tmp_path, no_azure_env):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        api.run(["target=aci", "mode=delete", "deployment_name=digits-svc", f"home={tmp_path / 'home'}"], out)
    assert "no Azure ML workspace is configured" in str(info.value)


# ----------------------------------------------------------------------------- at the network boundary


def _netns_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(not _netns_ok(), reason="needs `unshare -n` (root or user namespaces) so that "
                                 "nothing can leave this machine")


def run_offline(tmp_path: Path, *overrides: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """The real ``aideploy`` in an empty network namespace, with a clean Azure environment."""
    env = {k: v for k, v in os.environ.items() if k not in (*WORKSPACE_VARS, *CREDENTIAL_VARS)}
    # No `az`, no token caches: the credential chain finds only what this test gives it.
    env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", **(extra_env or {}))
    out = tmp_path / "out"
    proc = subprocess.run(["unshare", "-n", AIDEPLOY, f"home={tmp_path / 'home'}", f"hydra.run.dir={out}",
                           *overrides], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    proc.out = out
    return proc


@needs_netns
@pytest.mark.parametrize("target", ["aci", "managed_endpoint"])
def test_no_credential_fails_before_any_stage(tmp_path, target):
    if shutil.which("az", path="/usr/bin:/bin"):
        pytest.skip("the Azure CLI is installed: it is a credential source")
    proc = run_offline(tmp_path, f"target={target}", extra_env=FAKE_WORKSPACE)
    assert proc.returncode == 2, proc.stderr
    assert "error: target=" + target + ": no Azure credential is available" in proc.stderr
    assert "az login" in proc.stderr
    results = assert_no_stage_ran(proc.out)
    assert results["error"]["type"] == "ConfigError"
    assert_no_workspace_values(proc.stdout, proc.stderr, *(p.read_text() for p in proc.out.glob("*.json")),
                               (proc.out / "aideploy.log").read_text())


@needs_netns
def test_fake_service_principal_stops_at_the_sign_in_with_the_sdks_own_reason(tmp_path):
    """A well-formed workspace and service principal: the SDK's real sign-in request cannot leave."""
    principal = {"AZURE_TENANT_ID": "0d7a3b1c-5e2f-4a6b-9c8d-7e6f5a4b3c2d",
                 "AZURE_CLIENT_ID": "1e8b4c2d-6f3a-4b7c-8d9e-0f1a2b3c4d5e", "AZURE_CLIENT_SECRET": FAKE_SECRET}
    proc = run_offline(tmp_path, "target=aci", *SEED_004_VNET,
                       extra_env={**FAKE_WORKSPACE, **principal})
    assert proc.returncode == 1, proc.stderr  # StageError: the world, not the config
    assert "error: target=aci: Azure sign-in failed: EnvironmentCredential" in proc.stderr
    assert "login.microsoftonline.com" in proc.stderr  # the SDK's own network failure
    results = assert_no_stage_ran(proc.out)  # nothing trained, staged or deployed
    assert results["error"]["type"] == "StageError" and "teardown_failures" not in results
    assert not (proc.out / "deploy").exists()
    assert_no_workspace_values(proc.stdout, proc.stderr, *(p.read_text() for p in proc.out.glob("*.json")),
                               (proc.out / "aideploy.log").read_text())


# ----------------------------------------------------------------------------- without the Azure extra


HIDE_AZURE_SDKS = textwrap.dedent("""
    import sys

    class HideAzureSdks:
        '''As if `pip install 'aideploy[azure]'` had not been run.'''
        hidden = ("azureml", "azure.ai.ml", "azure.identity", "azure.mgmt")

        def find_spec(self, name, path=None, target=None):
            if any(name == h or name.startswith(h + ".") for h in self.hidden):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, HideAzureSdks())
    sys.argv = ["aideploy", *sys.argv[1:]]
    from aideploy.cli import main
    main()
""")


def run_without_sdks(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", HIDE_AZURE_SDKS, f"home={tmp_path / 'home'}",
                           f"hydra.run.dir={out}", *overrides], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    proc.out = out
    return proc


@pytest.mark.parametrize("target,module", [("aci", "azureml.core"), ("managed_endpoint", "azure.ai.ml")])
def test_azure_target_without_the_extra_names_it(tmp_path, target, module):
    proc = run_without_sdks(tmp_path, f"target={target}", "dry_run=true")
    assert proc.returncode == PluginError.exit_code, proc.stderr
    assert f"error: target={target} needs the Azure SDK module {module!r}, which is not installed" in proc.stderr
    assert "hint: pip install 'aideploy[azure]'" in proc.stderr
    results = assert_no_stage_ran(proc.out)
    assert results["error"]["type"] == "PluginError"


def test_core_and_local_target_work_without_the_extra(tmp_path):
    proc = run_without_sdks(tmp_path, "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((proc.out / "plan.json").read_text())
    assert plan["target"] == "local"


@pytest.mark.parametrize("target", ["aci", "managed_endpoint"])
def test_encrypted_azure_run_refuses_a_local_key_store(cli, target):
    proc = cli(f"target={target}", "encryption=fast")
    assert proc.returncode == 2
    assert "keystore=azure_blob" in proc.stderr
    assert "[1/" not in proc.stderr  # refused before the first stage ran


def test_a_managed_endpoint_needs_the_key_stores_account_key_before_the_first_stage(cli):
    """Its service counts the encryption limits in the key store's account, with that account's key, which
    aideploy keeps in Key Vault: without a connection string to take it from, nothing is trained or made."""
    proc = cli("target=managed_endpoint", "encryption=fast", "keystore=azure_blob",
               "keystore.connection_string_env=AIDEPLOY_TEST_NO_CONNECTION_STRING",
               env={"AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"})
    assert proc.returncode == 2, proc.stderr
    assert "$AIDEPLOY_TEST_NO_CONNECTION_STRING holds no connection string with an AccountKey" in proc.stderr
    assert "hint: export the key store's connection string" in proc.stderr
    assert "[1/" not in proc.stderr and "Traceback" not in proc.stderr


def test_aci_registers_a_model_from_outside_the_working_directory(tmp_path, monkeypatch, no_network):
    """azureml-core refuses a model_path outside the current directory ("Unauthorized access"),
    and aideploy's registry is under ``home``: registration runs from the model's directory, and
    gets as far as Azure's sign-in (the network boundary), with the directory restored."""
    from types import SimpleNamespace

    from azureml.core import Workspace
    from azureml.core.authentication import ServicePrincipalAuthentication

    from aideploy_plugins.target_aci import register_model

    model_file = tmp_path / "home" / "models" / "digits" / "1" / "model.pkl"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"not read before the upload")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    auth = ServicePrincipalAuthentication("00000000-0000-0000-0000-000000000000", "app", "secret")
    workspace = Workspace("00000000-0000-0000-0000-000000000000", "rg", "ws", auth=auth,
                          _disable_service_check=True)
    model = SimpleNamespace(path=model_file, name="digits", version=1)
    with pytest.raises(Exception) as raised:
        register_model(workspace, model, {}, "a model")
    assert "outside current working directory" not in str(raised.value)
    assert any("login.microsoftonline.com" in attempt for attempt in no_network), no_network
    assert Path.cwd() == elsewhere
    no_network.clear()  # the attempt was the point: registration reached the sign-in


# ----------------------------------------------------------------------------- what a target declares


def test_targets_declare_what_they_are_and_a_third_party_one_is_not_taken_for_azure():
    """Plugins ask the target's declaration, not its name: a target=k8s that declares nothing is
    neither built here nor given an Azure VNET."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aideploy.manager import PluginRegistry
    from aideploy.targets import UNDECLARED, capabilities
    from aideploy_plugins.network_vnet import aideploy_configure_network

    plugins = PluginRegistry.load([])

    def ctx(target):
        return SimpleNamespace(cfg=OmegaConf.create({"target": {"plugin": target}}), plugins=plugins, run_id="r1")

    local, aci, managed = (capabilities(ctx(t)) for t in ("local", "aci", "managed_endpoint"))
    assert (local.runs_here, local.cloud, local.serves_mlps) == (True, None, True)
    assert (aci.runs_here, aci.cloud, managed.cloud) == (False, "azure", "azure")
    # Encrypted MLPs everywhere: a Key Vault secret on a managed endpoint, ACI's one container its own.
    assert (local.mlp_token_secret, managed.mlp_token_secret, aci.mlp_token_secret) == ("generated", "key_vault",
                                                                                        "server")
    assert {aci.serves, managed.serves} == {"online"} and "fast" in managed.schemes
    assert capabilities(ctx("k8s")) is UNDECLARED and not UNDECLARED.runs_here and UNDECLARED.cloud is None

    vnet = OmegaConf.create({"vnet_name": "v", "subnet_name": "s", "location": "japaneast"})
    assert aideploy_configure_network(cfg=vnet, ctx=ctx("aci")).details["vnet"] == "v"
    with pytest.raises(ConfigError) as info:
        aideploy_configure_network(cfg=vnet, ctx=ctx("k8s"))
    assert "target=k8s does not say" in str(info.value) and "network=public" in info.value.hint
