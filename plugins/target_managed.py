"""``target=managed_endpoint``: an Azure ML managed online endpoint through azure-ai-ml (SDK v2).

The successor of the seeds' ACI web service: ``ManagedOnlineEndpoint`` (key auth; public
network access off with ``network=vnet``) and one ``ManagedOnlineDeployment`` serving the same
staged ``score.py`` with the environment stage's conda yml, then 100% of the traffic to it.
The endpoint is named by ``deployment_name`` (``aideploy-<run id>`` by default); deleting the
endpoint deletes its deployments.

azure-ai-ml is optional (``pip install 'aideploy[azure]'``) and imported only inside the
functions below, so loading this plugin never needs it.
"""

from __future__ import annotations

import logging
from typing import Any

from aideploy import hookimpl
from aideploy.artifacts import Endpoint, Secret
from aideploy.azure_workspace import (SESSION_KEY, Session, WorkspaceSettings, delete_by_name, deployment_name,
                                      preflight_due, require_sdk, sdk_error, teardown_note)
from aideploy.azure_workspace import connect as connect_workspace
from aideploy.errors import DeployError
from aideploy.stages import Mode

PLUGIN_NAME = "managed_endpoint"
SDK_MODULES = ("azure.ai.ml", "azure.identity")
PLAN_SDK_MODULES = ("azure.ai.ml",)  # a plan builds the SDK's entities and needs nothing else
# Online endpoint names: 3 to 32 characters, letters, digits and dashes, unique in the region.
NAME_PATTERN = r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]"
NAME_RULE = ("an online endpoint name is 3-32 characters: letters, digits and dashes, starting with a letter and "
             "ending with a letter or digit, and unique in its Azure region")


def _quiet_sdk_logs() -> None:
    # azure-ai-ml warns once per process that some schema classes it uses internally are
    # "experimental"; that is about the SDK, not about anything the user chose.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- config -> SDK entities


def public_network_access(network_cfg: Any) -> str:
    """``disabled`` in a private network (reachable only through the workspace's private endpoint)."""
    return "disabled" if network_cfg.plugin == "vnet" else "enabled"


def auth_mode(cfg: Any) -> str:
    mode = cfg.auth_mode
    return str(getattr(mode, "value", mode))


def build_endpoint(cfg: Any, network_cfg: Any, name: str) -> Any:
    """The ``ManagedOnlineEndpoint`` entity, from config alone (no workspace or credential)."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    _quiet_sdk_logs()
    return ManagedOnlineEndpoint(name=name, auth_mode=auth_mode(cfg),
                                 public_network_access=public_network_access(network_cfg),
                                 tags=dict(cfg.tags), description=cfg.description)


def build_deployment(cfg: Any, endpoint_name: str, model: Any, environment: Any, code: Any) -> Any:
    """The ``ManagedOnlineDeployment`` entity: the model file, the conda environment, the staged code."""
    from azure.ai.ml.entities import CodeConfiguration, Environment, ManagedOnlineDeployment, Model

    _quiet_sdk_logs()
    return ManagedOnlineDeployment(
        name=cfg.deployment, endpoint_name=endpoint_name,
        model=Model(path=str(model.path), description=f"{model.name} version {model.version} from aideploy"),
        environment=Environment(conda_file=str(environment.conda_file), image=cfg.image),
        code_configuration=CodeConfiguration(code=str(code.source_dir), scoring_script=code.entry_script),
        instance_type=cfg.instance_type, instance_count=cfg.instance_count, tags=dict(cfg.tags))


def serialized(entity: Any) -> dict[str, Any]:
    """The SDK's own serialised form of an entity (what ``dump()`` writes as YAML)."""
    try:
        return entity._to_dict()
    except Exception:  # a private method: if a later SDK changes it, fall back to the public attributes
        return {k: v for k, v in vars(entity).items() if not k.startswith("_")}


def endpoint_name(ctx: Any) -> str:
    return deployment_name(ctx, NAME_PATTERN, NAME_RULE)


# ----------------------------------------------------------------------------- workspace


def _open_workspace(settings: WorkspaceSettings, cred: Any) -> Any:
    from azure.ai.ml import MLClient

    _quiet_sdk_logs()
    client = MLClient(cred, settings.subscription_id, settings.resource_group, settings.workspace_name,
                      enable_telemetry=False)
    client.workspaces.get(settings.workspace_name)  # MLClient connects lazily: check it exists now
    return client


def connect(cfg: Any) -> Session:
    """The workspace, through SDK v2's ``MLClient``; each failure is a clear error."""
    return connect_workspace(cfg.workspace, PLUGIN_NAME, _open_workspace)


def delete_endpoint(client: Any, name: str, timeout: float | None = None) -> bool:
    """Delete the endpoint and its deployments; False (not an error) when there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.online_endpoints.begin_delete(name=name).result(timeout=timeout)
    except ResourceNotFoundError:
        return False
    return True


def _wait(poller: Any, timeout: float, what: str) -> Any:
    result = poller.result(timeout=timeout)
    if not poller.done():
        raise TimeoutError(f"{what} did not finish within {timeout:g} s")
    return result


def deployment_logs(client: Any, cfg: Any, name: str, settings: WorkspaceSettings) -> str:
    """The tail of the deployment's log, or why it could not be fetched."""
    try:
        text = client.online_deployments.get_logs(name=cfg.deployment, endpoint_name=name,
                                                  lines=cfg.log_tail_lines) or "(the log is empty)"
    except Exception as exc:
        text = f"(could not fetch the deployment's log: {type(exc).__name__}: {exc})"
    return settings.scrub(str(text).rstrip())


def endpoint_key(client: Any, name: str) -> Secret:
    """The key (auth_mode=key) or token (aml_token, aad_token) callers send as ``Bearer``."""
    creds = client.online_endpoints.get_keys(name)
    value = getattr(creds, "primary_key", None) or getattr(creds, "access_token", None)
    return Secret(value or "")


# ----------------------------------------------------------------------------- hooks


@hookimpl
def aideploy_before_stage(stage, ctx):
    """Pre-flight, before the data stage: config, SDK, workspace and credential, in that order.

    A missing SDK, workspace or credential fails here, before a model is trained. The
    connected client is kept for the deploy stage.
    """
    if not preflight_due(stage, ctx, PLUGIN_NAME):
        return
    endpoint_name(ctx)
    require_sdk(PLUGIN_NAME, *(PLAN_SDK_MODULES if ctx.cfg.dry_run else SDK_MODULES))
    if ctx.cfg.dry_run:
        return
    session = connect(ctx.cfg.target)
    ctx.artifacts[SESSION_KEY] = session
    ctx.log.info("      managed_endpoint: workspace from %s; signed in", session.settings.source)


@hookimpl
def aideploy_deploy(cfg, ctx, model, environment, network, code):
    name = endpoint_name(ctx)
    session = ctx.artifacts.get(SESSION_KEY) or connect(cfg)
    settings, client = session.settings, session.workspace
    endpoint = build_endpoint(cfg, ctx.cfg.network, name)
    deployment = build_deployment(cfg, name, model, environment, code)
    serve = ctx.mode is Mode.serve
    # Registered before the endpoint is created: a half-created endpoint must go too. The name
    # is this run's (or one the user chose to deploy over), so nothing else is deleted.
    if not serve:
        ctx.resources.add(f"online endpoint {name}", lambda: delete_endpoint(client, name),
                          {"kind": "azure", "target": "managed_endpoint", "name": name})
    try:
        _wait(client.online_endpoints.begin_create_or_update(endpoint), cfg.deploy_timeout, f"endpoint {name}")
    except Exception as exc:
        if serve:
            ctx.resources.add(f"failed online endpoint {name}", lambda: delete_endpoint(client, name),
                          {"kind": "azure", "target": "managed_endpoint", "name": name})
        raise sdk_error(exc, f"creating the online endpoint {name!r}", settings, DeployError) from None
    try:
        _wait(client.online_deployments.begin_create_or_update(deployment), cfg.deploy_timeout,
              f"deployment {cfg.deployment}")
    except Exception as exc:
        tail = deployment_logs(client, cfg, name, settings)
        if serve:  # a broken deployment is not worth keeping: its log is in this error
            ctx.resources.add(f"failed online endpoint {name}", lambda: delete_endpoint(client, name),
                          {"kind": "azure", "target": "managed_endpoint", "name": name})
        message = settings.scrub(str(getattr(exc, "message", None) or exc))
        raise DeployError(f"the deployment {cfg.deployment!r} of endpoint {name!r} failed: {message}\n"
                          f"--- last lines of the deployment's log (online_deployments.get_logs) ---\n{tail}",
                          hint="a failing init() usually means the model file or an import is broken; try "
                          "target=local with the same config to debug it here") from None
    try:
        endpoint.traffic = {cfg.deployment: 100}
        _wait(client.online_endpoints.begin_create_or_update(endpoint), cfg.deploy_timeout, "traffic update")
        scoring_uri = client.online_endpoints.get(name).scoring_uri
        key = endpoint_key(client, name)
    except Exception as exc:
        raise sdk_error(exc, f"routing traffic to {name!r} and getting its key", settings, DeployError) from None
    if serve:
        ctx.log.info("      the endpoint's key: az ml online-endpoint get-credentials -n %s -g <resource group> "
                     "-w <workspace> (mode=predict reads it from $%s)", name, ctx.cfg.scoring_key_env)
    return Endpoint(name, "managed_endpoint", scoring_uri, auth_key=key, keep_alive=False,
                    details={"deployment": cfg.deployment, "auth": auth_mode(cfg),
                             "public_network_access": endpoint.public_network_access})


@hookimpl
def aideploy_plan(cfg, ctx, model, environment, code):
    """What the deploy stage would do, from the SDK's own entities; no workspace, credential or network."""
    require_sdk(PLUGIN_NAME, *PLAN_SDK_MODULES)
    from azure.ai.ml import __version__ as sdk_version

    name = endpoint_name(ctx)
    # Staged locally (nothing in Azure) so the plan points at exactly the directory a deploy uploads.
    endpoint = build_endpoint(cfg, ctx.cfg.network, name)
    deployment = build_deployment(cfg, name, model, environment, code)
    ws = cfg.workspace
    return {"target": "managed_endpoint", "sdk": f"azure-ai-ml {sdk_version}", "actions": [
        {"action": "MLClient", "settings": {
            "from": f"target.workspace.config_file={ws.config_file}" if ws.config_file else
            f"env vars {ws.subscription_id_env}, {ws.resource_group_env}, {ws.workspace_name_env} if all set, "
            "else config.json as MLClient.from_config() finds it",
            "credential": "azure.identity.DefaultAzureCredential"}},
        {"action": "online_endpoints.begin_create_or_update", "settings": serialized(endpoint),
         **({"note": "network=vnet: no public inbound access; callers come through the workspace's private "
                     "endpoint. network.vnet_name/subnet_name/location are not used: a managed endpoint lives "
                     "in the workspace's region and managed network"} if ctx.cfg.network.plugin == "vnet" else {})},
        {"action": "online_deployments.begin_create_or_update", "settings": serialized(deployment)},
        {"action": "online_endpoints.begin_create_or_update", "settings": {"name": name,
                                                                           "traffic": {cfg.deployment: 100}}},
        {"action": "online_endpoints.get_keys", "settings": {"name": name, "auth_mode": auth_mode(cfg)}},
        {"action": "online_endpoints.begin_delete", "settings": {"name": name, "when": teardown_note(ctx, name)}},
    ]}


@hookimpl
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    return network.call(ctx.http_client(endpoint, cfg.request_timeout).post, requests.items)


@hookimpl
def aideploy_delete(cfg, ctx, name):
    require_sdk(PLUGIN_NAME, *SDK_MODULES)
    session = connect(cfg)
    return delete_by_name(ctx, session, "online endpoint", name, lambda: delete_endpoint(session.workspace, name, cfg.deploy_timeout))
