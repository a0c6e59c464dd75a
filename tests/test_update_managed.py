"""``mode=update`` on ``target=managed_endpoint``: blue/green as the SDK's real requests, valid against
Microsoft's REST spec, and the switch-or-roll-back decision driven by the smoke test's result.

Nothing reaches Azure: plans need no workspace or credential, and ``no_network`` fails any connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aideploy import api
from aideploy.errors import ConfigError, DeployError
from aideploy.update import SmokeResult

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
              pytest.mark.usefixtures("no_azure_env", "no_network")]
pytest.importorskip("azure.ai.ml", reason="the Azure extra is not installed: pip install 'aideploy[azure]'")

from aideploy_plugins.target_managed import (blue_green_steps, build_endpoint, new_deployment_name,  # noqa: E402
                                             serving_deployment, step_request)
from test_azure_requests import SPEC, aideploys, spec_errors  # noqa: E402
from test_azure_targets import no_azure_env, no_network  # noqa: E402,F401  (the fixtures above)

ENDPOINT = "online_endpoints.begin_create_or_update"
DELETE = "online_deployments.begin_delete"


def update_plan(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "out"
    results = api.run(["dry_run=true", "mode=update", "deployment_name=digits-ep", f"home={tmp_path / 'home'}",
                       "target=managed_endpoint", *overrides], out)
    assert results["status"] == "ok", results.get("error")
    return json.loads((out / "plan.json").read_text())


def names(actions: list[dict]) -> list[str]:
    return [a["action"] for a in actions]


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("network", ["public", "vnet"])
@pytest.mark.parametrize("auth_mode", ["key", "aml_token", "aad_token"])
@pytest.mark.parametrize("steps", [[100], [10, 50, 100]])
def test_update_plan_is_blue_green_and_valid_against_the_spec(tmp_path, network, auth_mode, steps):
    plan = update_plan(tmp_path, f"network={network}", f"target.auth_mode={auth_mode}",
                       f"update.traffic_steps=[{','.join(map(str, steps))}]")
    assert plan["mode"] == "update" and (plan["old_deployment"], plan["new_deployment"]) == ("blue", "green")
    actions, rollback = plan["actions"], plan["rollback"]
    assert names(actions) == [
        "MLClient", "workspaces.get", "online_endpoints.get", "datastores.get_default", "datastores._list_secrets",
        "upload for code", "code.create_or_update", "environments.create_or_update", "upload for models",
        "models.create_or_update", "online_deployments.begin_create_or_update",
        "online_endpoints.get_keys", "smoke test", *[ENDPOINT] * len(steps), DELETE]
    # Every request of both branches validates against the spec of its api-version (the SDK's own deviations
    # aside); the traffic steps as updates of the endpoint, each against the one before.
    assert aideploys(spec_errors(plan)) == []

    # The new deployment: created beside the old one, under its own name, with the endpoint's traffic untouched.
    create = actions[10]["request"]
    assert create["method"] == "PUT" and create["path"].endswith("/onlineEndpoints/digits-ep/deployments/green")
    assert create["body"]["properties"]["endpointComputeType"] == "Managed"
    # The smoke test reaches the new deployment directly, before any traffic moves.
    smoke = actions[12]["request"]
    assert smoke["headers"]["azureml-model-deployment"] == "green" and smoke["url"] == "{scoringUri}"
    # Then the traffic, step by step: the whole endpoint re-sent each time, shares summing to 100.
    shifts = [a["request"]["body"] for a in actions if a["action"] == ENDPOINT]
    expected = [{"blue": 100 - s, "green": s} if s < 100 else {"green": 100} for s in steps]
    assert [b["properties"]["traffic"] for b in shifts] == expected
    for body in shifts:
        assert sum(body["properties"]["traffic"].values()) == 100
        assert body["properties"]["publicNetworkAccess"] == ("Disabled" if network == "vnet" else "Enabled")
    # And last, the old deployment goes.
    assert actions[-1]["request"]["method"] == "DELETE"
    assert actions[-1]["request"]["path"].endswith("/onlineEndpoints/digits-ep/deployments/blue")
    # A failed smoke test: no traffic request at all, only the new deployment deleted.
    assert names(rollback) == [DELETE]
    assert rollback[0]["request"]["path"].endswith("/deployments/green")


def test_update_plan_names_the_new_deployment(tmp_path):
    plan = update_plan(tmp_path, "target.deployment=green")
    assert (plan["old_deployment"], plan["new_deployment"]) == ("green", "blue")
    plan = update_plan(tmp_path, "update.new_deployment=canary")
    assert plan["new_deployment"] == "canary" and plan["rollback"][0]["settings"]["name"] == "canary"


def test_replacing_a_deployment_by_itself_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        update_plan(tmp_path, "update.new_deployment=blue")
    assert "is the deployment being replaced" in str(info.value) and "new_deployment=null" in info.value.hint


# ----------------------------------------------------------------------------- the decision


def endpoint_entity():
    from omegaconf import OmegaConf

    from aideploy.config import ManagedEndpointTarget

    cfg = OmegaConf.structured(ManagedEndpointTarget)
    endpoint = build_endpoint(cfg, OmegaConf.create({"plugin": "public"}), "digits-ep", {}, "an endpoint")
    endpoint.traffic = {"blue": 100}
    return endpoint


def test_a_passed_smoke_test_moves_the_traffic_then_deletes_the_old_deployment():
    from aideploy.azure_requests import plan_client

    endpoint = endpoint_entity()
    steps = blue_green_steps(endpoint, "blue", "green", [10, 50, 100], SmokeResult(20, 20))
    assert [a for a, _ in steps] == [ENDPOINT, ENDPOINT, ENDPOINT, DELETE]
    assert [dict(e.traffic) for _, e in steps[:3]] == [{"blue": 90, "green": 10}, {"blue": 50, "green": 50},
                                                       {"blue": 0, "green": 100}]
    assert steps[3][1] == {"name": "blue", "endpoint_name": "digits-ep"}
    assert endpoint.traffic == {"blue": 100}  # the endpoint read from Azure is not changed in place
    client = plan_client()
    for action, argument in steps:
        request = step_request(action, argument, client)
        if action == ENDPOINT:
            assert SPEC.check_request(request) == []
            assert request["body"]["properties"]["authMode"] == "Key"


@pytest.mark.parametrize("smoke", [SmokeResult(20, 19, "sample 20 of 20: the new version predicts [3]"),
                                   SmokeResult(20, 0, "sample 1 of 20: HTTP 502 bad gateway"),
                                   SmokeResult(0, 0)])
def test_a_failed_smoke_test_rolls_back(smoke):
    endpoint = endpoint_entity()
    steps = blue_green_steps(endpoint, "blue", "green", [10, 50, 100], smoke)
    assert steps == [(DELETE, {"name": "green", "endpoint_name": "digits-ep"})]  # traffic stays on blue
    assert endpoint.traffic == {"blue": 100}


def test_the_deployment_to_replace_is_the_one_with_all_the_traffic():
    assert serving_deployment({"blue": 100}, "ep") == "blue"
    assert serving_deployment({"blue": "100", "green": 0}, "ep") == "blue"
    for split in ({"blue": 50, "green": 50}, {}, {"blue": 90}):
        with pytest.raises(DeployError) as info:
            serving_deployment(split, "ep")
        assert "mode=update replaces the one deployment" in str(info.value) and "--traffic" in info.value.hint


def test_new_deployment_names():
    from omegaconf import OmegaConf

    from aideploy.config import UpdateConfig

    cfg = OmegaConf.structured(UpdateConfig)
    assert new_deployment_name(cfg, "blue") == "green"
    assert new_deployment_name(cfg, "green") == "blue"
    assert new_deployment_name(cfg, "v1") == "green"
    cfg.new_deployment = "x"
    with pytest.raises(ConfigError):
        new_deployment_name(cfg, "blue")


# ----------------------------------------------------------------------------- target=aci


def test_aci_update_plan_is_webservice_update_with_a_roll_back(tmp_path):
    pytest.importorskip("azureml.core", reason="the Azure extra is not installed")
    out = tmp_path / "out"
    results = api.run(["dry_run=true", "mode=update", "deployment_name=digits-svc", f"home={tmp_path / 'home'}",
                       "target=aci", "update.smoke_samples=5"], out)
    assert results["status"] == "ok", results.get("error")
    plan = json.loads((out / "plan.json").read_text())
    assert names(plan["actions"]) == ["Workspace.get", "Webservice", "AssetsClient.create_asset", "Model.register",
                                      "Environment.from_conda_specification", "Webservice.update",
                                      "Webservice.wait_for_deployment", "Webservice.get_keys", "smoke test",
                                      "Webservice.update"]
    update = plan["actions"][5]["settings"]
    assert update["name"] == "digits-svc" and update["models"] == ["sklearn_digits (registered above)"]
    # The requests themselves, and their bodies against the v1 spec: tests/test_azure_requests.py.
    assert plan["actions"][5]["request"]["method"] == "PATCH"
    assert update["inference_config"]["entry_script"].endswith("score.py")
    smoke = plan["actions"][-2]["settings"]
    assert smoke["samples"] == 5 and smoke["request"]["headers"]["Authorization"] == "Bearer {key}"
    assert names(plan["rollback"]) == ["Webservice.update", "Webservice.wait_for_deployment"]
    assert "one version" in plan["rollback"][0]["note"]
    assert "Model.deploy" not in names(plan["actions"]) and "Webservice.delete" not in names(plan["actions"])
