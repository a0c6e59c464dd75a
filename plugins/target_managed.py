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

import copy
import logging
import os
from typing import Any

from aideploy import azure_secrets, azure_tags, hookimpl, plan_script
from aideploy.artifacts import Endpoint, Secret
from aideploy.azure_workspace import (SESSION_KEY, AzureResource, Session, WorkspaceSettings, delete_by_name,
                                      delete_command, deployment_name, forget_registrations, preflight_due,
                                      record_registrations, recorded_registrations, require_sdk, sdk_error,
                                      teardown_note)
from aideploy.azure_workspace import connect as connect_workspace
from aideploy.errors import ConfigError, DeployError
from aideploy.stages import Mode
from aideploy.update import SmokeResult, smoke_test

PLUGIN_NAME = "managed_endpoint"
SDK_MODULES = ("azure.ai.ml", "azure.identity", "azure.mgmt.keyvault", "azure.mgmt.authorization",
               "azure.keyvault.secrets")
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

MAX_REQUEST_TIMEOUT = 180.0
"""Seconds: the longest scoring request Azure lets a managed online deployment run (its default is 5)."""

MANAGED_NETWORK_NOTE = (
    "network=vnet: public inbound and outbound access are both off. Callers reach the endpoint only "
    "through the workspace's private endpoint in their VNET; the deployment reaches only what the "
    "workspace's managed network allows (private endpoints to its storage, key vault and registry, plus "
    "its outbound rules). A managed endpoint is never placed in a customer subnet: a key store outside "
    "the workspace's storage needs an outbound private-endpoint rule in the managed network.")

# network=vnet settings that place a container in a customer subnet: they have no managed-endpoint
# equivalent. The address/ip settings describe the local namespaces and are not Azure's.
_SUBNET_SETTINGS = ("vnet_name", "subnet_name", "location", "resource_group")


def check_network(network_cfg: Any) -> None:
    """Refuse ``network.*`` settings a managed endpoint cannot apply (rather than silently ignoring them)."""
    if network_cfg.plugin != "vnet":
        return
    from aideploy.config import VnetNetwork

    defaults = VnetNetwork()
    changed = [k for k in _SUBNET_SETTINGS if network_cfg.get(k) != getattr(defaults, k)]
    if changed:
        settings = ", ".join(f"network.{k}={network_cfg.get(k)}" for k in changed)
        raise ConfigError(
            f"target=managed_endpoint cannot use {settings}: a managed online endpoint is not placed in a "
            "customer VNET or subnet, it lives in the workspace's region and managed network",
            hint="drop those settings (network=vnet then means: no public inbound or outbound access; reach the "
            "endpoint through the workspace's private endpoint), or use target=aci to deploy into your subnet")


def public_network_access(network_cfg: Any) -> str:
    """``Disabled`` in a private network, ``Enabled`` otherwise: the spec's casing, used for inbound and egress."""
    return "Disabled" if network_cfg.plugin == "vnet" else "Enabled"


def auth_mode(cfg: Any) -> str:
    mode = cfg.auth_mode
    return str(getattr(mode, "value", mode))


def check_request_timeout(cfg: Any) -> None:
    if cfg.request_timeout > MAX_REQUEST_TIMEOUT:
        raise ConfigError(f"target.request_timeout={cfg.request_timeout:g} is more than a managed online "
                          f"deployment allows ({MAX_REQUEST_TIMEOUT:g} s)",
                          hint=f"set target.request_timeout to at most {MAX_REQUEST_TIMEOUT:g}, or send smaller "
                          "batches (encryption.batch_size) so each answer comes sooner")


def probe_timing(cfg: Any, scheme: str) -> Any:
    timing = cfg.probes.get(scheme)
    if timing is None:
        raise ConfigError(f"target.probes has no entry for encryption scheme {scheme!r}",
                          hint=f"add target.probes.{scheme}.initial_delay and .timeout (seconds), e.g. "
                          f"+target.probes.{scheme}.initial_delay=10 +target.probes.{scheme}.timeout=2")
    return timing


def check_config(ctx: Any) -> None:
    """What a managed endpoint cannot do with this config, found before any stage and without the SDK."""
    check_network(ctx.cfg.network)
    check_request_timeout(ctx.cfg.target)
    probe_timing(ctx.cfg.target, ctx.cfg.encryption.plugin)


def request_settings(cfg: Any) -> Any:
    """The deployment's ``OnlineRequestSettings``: the client's timeout, one request per worker at a time."""
    from azure.ai.ml.entities import OnlineRequestSettings

    check_request_timeout(cfg)
    return OnlineRequestSettings(request_timeout_ms=int(round(cfg.request_timeout * 1000)),
                                 max_concurrent_requests_per_instance=cfg.worker_count)


def probes(cfg: Any, scheme: str) -> tuple[Any, Any]:
    """(liveness, readiness) ``ProbeSettings`` for the encryption scheme (``target.probes.<scheme>``)."""
    from azure.ai.ml.entities import ProbeSettings

    timing = probe_timing(cfg, scheme)
    return tuple(ProbeSettings(initial_delay=timing.initial_delay, timeout=timing.timeout, period=10,
                               failure_threshold=30, success_threshold=1) for _ in range(2))


def build_endpoint(cfg: Any, network_cfg: Any, name: str, tags: dict[str, str], description: str) -> Any:
    """The ``ManagedOnlineEndpoint`` entity, from config and the run (no workspace or credential)."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedOnlineEndpoint

    _quiet_sdk_logs()
    check_network(network_cfg)
    # System-assigned (the SDK's default too, said here because the service's secrets depend on it): the
    # identity every deployment of the endpoint reads its Key Vault secrets with (aideploy.azure_secrets).
    return ManagedOnlineEndpoint(name=name, auth_mode=auth_mode(cfg),
                                 public_network_access=public_network_access(network_cfg),
                                 identity=IdentityConfiguration(type="system_assigned"), tags=tags,
                                 description=description)


SLA_INSTANCES = 3
"""Azure's SLA for managed online endpoints asks for at least this many instances per deployment."""


def sla_note(cfg: Any) -> dict[str, str]:
    """A plan note (and a log line at deploy) when ``target.instance_count`` is below what the SLA asks for."""
    if cfg.instance_count >= SLA_INSTANCES:
        return {}
    return {"sla": f"instance_count={cfg.instance_count}: Azure's SLA for managed online endpoints needs "
                   f"{SLA_INSTANCES} or more instances (target.instance_count={SLA_INSTANCES}); fewer suit a trial"}


def build_deployment(cfg: Any, endpoint_name: str, model: Any, environment: Any, code: Any, scheme: str,
                     network_cfg: Any, tags: dict[str, str], description: str, name: str | None = None,
                     vault_settings: dict[str, str] | None = None) -> Any:
    """The ``ManagedOnlineDeployment`` entity: the model file, the conda environment, the staged code,
    request settings, probes, and egress closed in a private network. ``name``: ``target.deployment``
    unless given (``mode=update`` names the new deployment); ``vault_settings``: where its service reads
    its secrets (:func:`aideploy.azure_secrets.deployment_settings`)."""
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, Model

    from aideploy import kernel_image

    _quiet_sdk_logs()
    liveness, readiness = probes(cfg, scheme)
    return ManagedOnlineDeployment(
        name=name or cfg.deployment, endpoint_name=endpoint_name, description=description,
        model=Model(path=str(model.path), description=description, tags=tags),
        environment=kernel_image.environment(environment.conda_file, cfg.image, scheme),
        code_configuration=CodeConfiguration(code=str(code.source_dir), scoring_script=code.entry_script),
        instance_type=cfg.instance_type, instance_count=cfg.instance_count, tags=tags,
        properties=azure_tags.properties(cfg),
        environment_variables={"WORKER_COUNT": str(cfg.worker_count), **code.settings, **(vault_settings or {})},
        request_settings=request_settings(cfg), liveness_probe=liveness, readiness_probe=readiness,
        egress_public_network_access=public_network_access(network_cfg))


def serialized(entity: Any) -> dict[str, Any]:
    """The SDK's own readable form of an entity (what ``dump()`` writes as YAML)."""
    try:
        return entity._to_dict()
    except Exception:  # a private method: if a later SDK changes it, fall back to the public attributes
        return {k: v for k, v in vars(entity).items() if not k.startswith("_")}


def endpoint_name(ctx: Any) -> str:
    return deployment_name(ctx, NAME_PATTERN, NAME_RULE)


def vault_secrets(ctx: Any, code: Any, model: Any, name: str) -> dict[str, str]:
    """``{setting: vault secret name}`` of the secrets this deployment's service reads from Key Vault (empty
    when it needs none): the limits store's credential when it counts in a blob container, the MLP token
    secret when it serves an MLP under ``encryption=fast``."""
    from aideploy.linear import mlp_layers

    mlp = model is not None and mlp_layers(model, ctx.cfg.encryption.plugin) is not None
    return azure_secrets.secret_names(name, azure_secrets.needed(code.settings, mlp))


SERVICE_SECRET_RUNTIME = ["azure-identity>=1.15", "azure-keyvault-secrets>=4.7"]
"""What the service reads its Key Vault secrets with, in the scoring environment only when it has some."""


@hookimpl
def aideploy_scoring_requirements(ctx):
    code = ctx.artifacts.get("code")
    if ctx.cfg.target.plugin != PLUGIN_NAME or code is None:
        return None
    return SERVICE_SECRET_RUNTIME if vault_secrets(ctx, code, ctx.artifacts.get("model"), endpoint_name(ctx)) else None


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
    check_config(ctx)
    require_sdk(PLUGIN_NAME, *(PLAN_SDK_MODULES if ctx.cfg.dry_run else SDK_MODULES))
    if ctx.cfg.dry_run:
        return
    from aideploy import service_env

    # The limits store's credential comes from the key store's connection string: missing, it fails now.
    azure_secrets.values(azure_secrets.needed(service_env.from_config(ctx.cfg), mlp=False), ctx.cfg.keystore,
                         os.environ)
    session = connect(ctx.cfg.target)
    ctx.artifacts[SESSION_KEY] = session
    ctx.log.info("      managed_endpoint: workspace from %s; signed in", session.settings.source)


@hookimpl
def aideploy_deploy(cfg, ctx, model, environment, network, code):
    name = endpoint_name(ctx)
    session = ctx.artifacts.get(SESSION_KEY) or connect(cfg)
    settings, client = session.settings, session.workspace
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    endpoint = build_endpoint(cfg, ctx.cfg.network, name, tags, description)
    names = vault_secrets(ctx, code, model, name)
    vault = service_vault(cfg, session, names)
    deployment = build_deployment(cfg, name, model, environment, code, ctx.cfg.encryption.plugin, ctx.cfg.network,
                                  tags, description, vault_settings=azure_secrets.deployment_settings(
                                      vault.url, names) if vault else None)
    for note in sla_note(cfg).values():
        ctx.log.warning("      %s", note)
    # Journaled before the endpoint is created: a half-created endpoint must go too. The name is
    # this run's (or one the user chose to deploy over), so nothing else is deleted. mode=serve
    # keeps it once it serves; a broken one is not worth keeping (its log is in the error).
    created = AzureResource(ctx, f"online endpoint {name}", lambda: delete_endpoint(client, name),
                            target=PLUGIN_NAME, name=name, delete_command=delete_command(PLUGIN_NAME, name))
    try:
        _wait(client.online_endpoints.begin_create_or_update(endpoint), cfg.deploy_timeout, f"endpoint {name}")
    except Exception as exc:
        raise sdk_error(exc, f"creating the online endpoint {name!r}", settings, DeployError) from None
    # The endpoint's identity exists now; the deployment, whose init() reads the secrets, comes after them.
    stored = store_secrets(ctx, session, name, names, vault) if vault else []
    try:
        _wait(client.online_deployments.begin_create_or_update(deployment), cfg.deploy_timeout,
              f"deployment {cfg.deployment}")
    except Exception as exc:
        tail = deployment_logs(client, cfg, name, settings)
        message = settings.scrub(str(getattr(exc, "message", None) or exc))
        raise DeployError(f"the deployment {cfg.deployment!r} of endpoint {name!r} failed: {message}\n"
                          f"--- last lines of the deployment's log (online_deployments.get_logs) ---\n{tail}",
                          hint="a failing init() usually means the model file or an import is broken; try "
                          "target=local with the same config to debug it here") from None
    record_registrations(ctx.cfg.home, name, registered_assets(deployment))
    try:
        endpoint.traffic = {cfg.deployment: 100}
        _wait(client.online_endpoints.begin_create_or_update(endpoint), cfg.deploy_timeout, "traffic update")
        scoring_uri = client.online_endpoints.get(name).scoring_uri
        key = endpoint_key(client, name)
    except Exception as exc:
        raise sdk_error(exc, f"routing traffic to {name!r} and getting its key", settings, DeployError) from None
    if ctx.mode is Mode.serve:
        for resource in (created, *stored):
            resource.keep()
        ctx.log.info("      the endpoint's key: az ml online-endpoint get-credentials -n %s -g <resource group> "
                     "-w <workspace> (mode=predict reads it from $%s)", name, ctx.cfg.scoring_key_env)
    return Endpoint(name, "managed_endpoint", scoring_uri, auth_key=key, keep_alive=False,
                    details={"deployment": cfg.deployment, "auth": auth_mode(cfg),
                             "public_network_access": endpoint.public_network_access})


def service_vault(cfg: Any, session: Session, names: dict[str, str]) -> azure_secrets.Vault | None:
    """The Key Vault the service's secrets go to (None when it needs none), checked to use Azure RBAC."""
    if not names:
        return None
    try:
        vault = azure_secrets.workspace_vault(session.workspace, session.settings, cfg.key_vault)
        azure_secrets.check_vault(session.credential, vault)
    except ConfigError:
        raise
    except Exception as exc:
        raise sdk_error(exc, "reading the Key Vault for the service's secrets", session.settings, DeployError,
                        hint="the credential needs Reader on the workspace's Key Vault (or target.key_vault)") from None
    return vault


def store_secrets(ctx: Any, session: Session, name: str, names: dict[str, str],
                  vault: azure_secrets.Vault) -> list[AzureResource]:
    """Each secret into the vault and the endpoint identity's role on it, recorded and journaled before it is
    made (``mode=delete`` and ``mode=gc`` find them after a crash); the teardown deletes them unless kept."""
    values = azure_secrets.values(list(names), ctx.cfg.keystore, os.environ)
    record_secrets(ctx.cfg.home, name, names, ctx.cfg.target.key_vault)
    try:
        principal = session.workspace.online_endpoints.get(name).identity.principal_id
    except Exception as exc:
        raise sdk_error(exc, f"reading the identity of endpoint {name!r}", session.settings, DeployError) from None
    stored = []
    for setting, secret in names.items():
        def release(secret: str = secret) -> None:
            azure_secrets.delete(session.credential, vault, name, secret)
            forget_registrations(ctx.cfg.home, name, SECRET_KIND, secret)

        stored.append(AzureResource(ctx, f"Key Vault secret {secret} and its role assignment", release,
                                    target=PLUGIN_NAME, name=name, delete_command=delete_command(PLUGIN_NAME, name)))
        try:
            azure_secrets.create(session.credential, vault, name, setting, secret, values[setting], principal)
        except Exception as exc:
            raise sdk_error(exc, f"keeping {setting} in Key Vault {vault.name} as {secret}", session.settings,
                            DeployError, hint="writing a secret through ARM needs Contributor on the vault, assigning "
                            "its role Owner, User Access Administrator or Role Based Access Control Administrator; "
                            "a secret of that name deleted within the vault's retention period must be recovered "
                            "or purged first (az keyvault secret recover|purge)") from None
    ctx.log.info("      Key Vault %s: %s, readable by the endpoint's identity only", vault.name,
                 ", ".join(names.values()))
    return stored


UPLOAD_NOTE = ("the SDK's upload (BlobStorageClient.upload): one PUT per file, each file's blob name from the SDK's "
               "own enumeration (its ignore files apply), then the blobs' metadata marked upload_status=completed "
               "(PUT ?comp=metadata); a content hash already uploaded is not uploaded again")
UPLOADED = ("uploaded first to the workspace's default datastore under LocalUpload/<content hash>/; "
            "{storageAccount} and {container} are read from that datastore at run time")
ASSET_NOTES = {
    "code.create_or_update": "the staged code directory, " + UPLOADED + "; the SDK names anonymous code "
                             "afresh (a uuid) unless the same content was uploaded before",
    "environments.create_or_update": "the conda yml on the base image (encryption=fast: the build context that also "
                                     "compiles the kernels in the image, aideploy/kernel_image.py), named by the SDK's "
                                     "content hash",
    "models.create_or_update": "the registered model's directory, " + UPLOADED,
}


def deployment_actions(deployment: Any, client: Any, endpoint: str, name: str, note: str,
                       extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The asset registrations (code, environment, model) and the deployment's create, as plan actions."""
    from aideploy.azure_requests import WORKSPACE_LOCATION, asset_actions, sdk_request

    readable = serialized(deployment)  # before the SDK swaps local paths for registered assets' ids
    actions = asset_actions(deployment, client, UPLOAD_NOTE, ASSET_NOTES)
    actions.append({"action": "online_deployments.begin_create_or_update", "settings": readable,
                    "request": sdk_request("online_deployments_create_or_update",
                                           client.online_deployments._online_deployment,
                                           deployment._to_rest_object(location=WORKSPACE_LOCATION),
                                           endpoint_name=endpoint, deployment_name=name),
                    "note": note, **(extra or {})})
    return actions


def workspace_action(cfg: Any) -> dict[str, Any]:
    """``MLClient`` as a plan action: where the workspace comes from (names only, never values)."""
    ws = cfg.workspace
    return {"action": "MLClient", "settings": {
        "from": f"target.workspace.config_file={ws.config_file}" if ws.config_file else
        f"env vars {ws.subscription_id_env}, {ws.resource_group_env}, {ws.workspace_name_env} if all set, "
        "else config.json as MLClient.from_config() finds it",
        "credential": "azure.identity.DefaultAzureCredential"}}


def plan_actions(cfg: Any, ctx: Any, model: Any, environment: Any, code: Any) -> list[dict[str, Any]]:
    """Each step of the deploy stage: the SDK call, its readable settings and the REST request it sends.

    The requests are the SDK's own (see :mod:`aideploy.azure_requests`), in the order the deploy
    stage makes them; the reads the SDK makes on the way (the endpoint's existence, the datastore,
    the upload's blobs) are named in notes.
    """
    from azure.ai.ml.operations._online_endpoint_operations import _strip_zeroes_from_traffic

    from aideploy.azure_requests import WORKSPACE_LOCATION, plan_client, sdk_request

    name = endpoint_name(ctx)
    scheme, network_cfg = ctx.cfg.encryption.plugin, ctx.cfg.network
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    endpoint = build_endpoint(cfg, network_cfg, name, tags, description)
    names = vault_secrets(ctx, code, model, name)
    vault = azure_secrets.plan_vault(cfg.key_vault)
    deployment = build_deployment(cfg, name, model, environment, code, scheme, network_cfg, tags, description,
                                  vault_settings=azure_secrets.deployment_settings(vault.url, names))
    client = plan_client()
    endpoints = client.online_endpoints._online_operation
    vnet = network_cfg.plugin == "vnet"
    actions: list[dict[str, Any]] = [
        workspace_action(cfg),
        workspace_read(client, cfg.key_vault, names),
        *([azure_secrets.vault_action(vault, cfg.key_vault)] if names else []),
        {"action": "online_endpoints.begin_create_or_update", "settings": serialized(endpoint),
         "request": sdk_request("online_endpoints_create_or_update", endpoints,
                                endpoint._to_rest_online_endpoint(location=WORKSPACE_LOCATION), endpoint_name=name),
         **({"note": MANAGED_NETWORK_NOTE} if vnet else {})},
    ]
    if names:  # the endpoint's identity exists now; the deployment, which reads the secrets, comes after
        actions.append({"action": "online_endpoints.get", "settings": {"name": name, "reads": "identity.principalId"},
                        "request": {**sdk_request("online_endpoints_get", endpoints, endpoint_name=name),
                                    "captures": {"endpointPrincipalId": "identity.principalId"}},
                        "note": "the endpoint's system-assigned identity, which every deployment of it runs as"})
        actions += azure_secrets.provision_actions(vault, names, name, ctx.cfg.keystore)
    actions += deployment_actions(deployment, client, name, cfg.deployment,
                                  "the SDK first checks the endpoint exists (GET) and validates the scoring script",
                                  {**({"egress": MANAGED_NETWORK_NOTE} if vnet else {}), **sla_note(cfg)})
    # The traffic update re-sends the whole endpoint, as OnlineEndpointOperations does.
    endpoint.traffic = _strip_zeroes_from_traffic({cfg.deployment: 100})
    actions.append({"action": "online_endpoints.begin_create_or_update",
                    "settings": {"name": name, "traffic": {cfg.deployment: 100}},
                    "request": sdk_request("online_endpoints_create_or_update", endpoints,
                                           endpoint._to_rest_online_endpoint(location=WORKSPACE_LOCATION),
                                           endpoint_name=name)})
    keys = {"key": "online_endpoints_list_keys", "aml_token": "online_endpoints_get_token"}.get(auth_mode(cfg))
    actions.append({"action": "online_endpoints.get_keys", "settings": {"name": name, "auth_mode": auth_mode(cfg)},
                    **({"request": sdk_request(keys, endpoints, endpoint_name=name)} if keys else
                       {"note": "aad_token: a Microsoft Entra token from the credential, no request to the endpoint"})})
    # The teardown releases in the reverse order of creation: the secrets' role assignments and the secrets, then
    # the endpoint.
    actions += azure_secrets.release_actions(vault, names, name, teardown_note(ctx, name))
    actions.append({"action": "online_endpoints.begin_delete", "settings": {"name": name,
                                                                           "when": teardown_note(ctx, name)},
                    "request": sdk_request("online_endpoints_delete", endpoints, endpoint_name=name),
                    "note": "deleting the endpoint deletes its deployments"})
    return actions


def workspace_read(client: Any, key_vault: str | None, names: dict[str, str]) -> dict[str, Any]:
    """``workspaces.get`` as a plan action: its region, and its Key Vault when the service keeps secrets there
    (``key_vault``: ``target.key_vault``, a vault named instead)."""
    from aideploy.azure_requests import WORKSPACE_LOCATION, sdk_request

    captures = {"workspaceLocation": "location", **(azure_secrets.vault_captures(key_vault) if names else {})}
    note = f"the SDK reads the workspace's region: {WORKSPACE_LOCATION} in the bodies below"
    if names and not key_vault:
        note += "; aideploy reads its Key Vault (properties.keyVault): {keyVaultResourceGroup}, {keyVaultName}"
    return {"action": "workspaces.get", "settings": {"name": "{workspaceName}"},
            "request": {**sdk_request("workspaces_get", client.workspaces._operation), "captures": captures},
            "note": note}


@hookimpl
def aideploy_plan(cfg, ctx, model, environment, code):
    """What the deploy stage would do, from the SDK's own entities and requests; no workspace, credential or network."""
    require_sdk(PLUGIN_NAME, *PLAN_SDK_MODULES)
    from azure.ai.ml import __version__ as sdk_version

    plan: dict[str, Any] = {"target": "managed_endpoint", "sdk": f"azure-ai-ml {sdk_version}"}
    if ctx.mode is Mode.update:
        plan.update(mode="update", **update_plan_actions(cfg, ctx, model, environment, code))
    elif ctx.mode is Mode.delete:
        plan.update(mode="delete", actions=delete_plan_actions(cfg, ctx))
    else:
        plan["actions"] = plan_actions(cfg, ctx, model, environment, code)
    plan_script.write(ctx.output_dir, plan, cfg.workspace)
    return plan


@hookimpl
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    return network.call(ctx.http_client(endpoint, cfg.request_timeout).post, requests.items)


SECRET_KIND = "key_vault_secret"


def record_secrets(home: Any, name: str, names: dict[str, str], key_vault: str | None) -> None:
    """Remember, before they are made, the Key Vault secrets (and so the role assignments) of endpoint ``name``:
    ``mode=delete`` deletes them, also after a run that crashed while making them. Names only: the vault is
    the workspace's, read again then, or ``target.key_vault``."""
    record_registrations(home, name, [{"kind": SECRET_KIND, "setting": setting, "name": secret, "vault": key_vault}
                                      for setting, secret in names.items()])


def recorded_secrets(home: Any, name: str) -> dict[str, Any]:
    """``{"names": {setting: secret}, "vault": target.key_vault or None}`` as :func:`record_secrets` left them."""
    items = [r for r in recorded_registrations(home, name) if r["kind"] == SECRET_KIND]
    return {"names": {r["setting"]: r["name"] for r in items}, "vault": next((r["vault"] for r in items), None)}


REGISTERED_KINDS = {"codes": "code", "environments": "environment", "models": "model"}
"""The ARM id segment of each asset a deployment registers, and the name a plan gives it."""


def registered_assets(deployment: Any) -> list[dict[str, str]]:
    """The code, environment and model versions the SDK registered for ``deployment`` (it puts their ARM
    ids, ``.../<codes|environments|models>/<name>/versions/<version>``, in the entity as it sends it)."""
    import re

    found = []
    for value in (deployment.code_configuration.code, deployment.environment, deployment.model):
        match = re.search(r"/(codes|environments|models)/([^/]+)/versions/([^/]+)$", str(value))
        if match:
            found.append({"kind": REGISTERED_KINDS[match[1]], "name": match[2], "version": match[3]})
    return found


def version_operations(client: Any, kind: str) -> tuple[str, Any]:
    """(the generated builder's name, the operation group the SDK pins) for deleting a ``kind`` version."""
    return {"code": ("code_versions_delete", client._code._version_operation),
            "environment": ("environment_versions_delete", client.environments._version_operations),
            "model": ("model_versions_delete", client.models._model_versions_operation)}[kind]


def delete_registrations(client: Any, settings: WorkspaceSettings, registrations: list[dict[str, str]]) -> None:
    """Delete recorded asset versions with the generated operations (the SDK's own API only archives them)."""
    from azure.core.exceptions import ResourceNotFoundError

    for item in registrations:
        _, operations = version_operations(client, item["kind"])
        try:
            operations.delete(settings.resource_group, settings.workspace_name, item["name"], item["version"])
        except ResourceNotFoundError:
            continue


@hookimpl
def aideploy_delete(cfg, ctx, name):
    require_sdk(PLUGIN_NAME, *SDK_MODULES)
    session = connect(cfg)
    deleted = delete_by_name(ctx, session, "online endpoint", name,
                             lambda: delete_endpoint(session.workspace, name, cfg.deploy_timeout))
    secrets = recorded_secrets(ctx.cfg.home, name)
    if secrets["names"] and delete_by_name(ctx, session, "Key Vault secrets and role assignments of", name,
                                           lambda: delete_secrets(ctx, session, name, secrets)):
        forget_registrations(ctx.cfg.home, name, SECRET_KIND)
    registrations = [r for r in recorded_registrations(ctx.cfg.home, name) if r["kind"] in REGISTERED_KINDS.values()]
    if registrations and cfg.delete_registrations:
        delete_by_name(ctx, session, "registrations of", name,
                       lambda: delete_registrations(session.workspace, session.settings, registrations) or True)
    elif registrations:
        ctx.log.info("      kept the %d asset versions this home registered for %s (target.delete_registrations="
                     "true deletes them)", len(registrations), name)
    return deleted


def delete_secrets(ctx: Any, session: Session, name: str, secrets: dict[str, Any]) -> bool:
    """Each recorded secret's role assignment and the secret itself (:func:`aideploy.azure_secrets.delete`);
    True when all are gone. A secret the signed-in identity may not delete is a warning saying how."""
    vault = azure_secrets.workspace_vault(session.workspace, session.settings, secrets["vault"])
    gone = True
    for secret in secrets["names"].values():
        try:
            azure_secrets.delete(session.credential, vault, name, secret)
        except RuntimeError as exc:
            ctx.log.warning("      %s", exc)
            gone = False
    return gone


def delete_plan_actions(cfg: Any, ctx: Any) -> list[dict[str, Any]]:
    """``mode=delete``: the endpoint's DELETE (its deployments go with it), and the asset versions this home
    registered for it, listed, with their DELETEs only under ``target.delete_registrations=true``."""
    from aideploy.azure_requests import plan_client, sdk_request

    name = endpoint_name(ctx)
    client = plan_client()
    registrations = [r for r in recorded_registrations(ctx.cfg.home, name) if r["kind"] in REGISTERED_KINDS.values()]
    secrets = recorded_secrets(ctx.cfg.home, name)
    vault = azure_secrets.plan_vault(secrets.get("vault"))
    actions = [workspace_action(cfg)]
    if secrets["names"]:
        actions.append(workspace_read(client, secrets["vault"], secrets["names"]))
    actions.append({"action": "online_endpoints.begin_delete", "settings": {
                    "name": name, "when": "now: mode=delete (a name that is not there is a warning)"},
                    "request": sdk_request("online_endpoints_delete", client.online_endpoints._online_operation,
                                           endpoint_name=name),
                    "note": "deleting the endpoint deletes its deployments"})
    actions += azure_secrets.release_actions(vault, secrets["names"], name, "now: mode=delete")
    for item in registrations:
        builder, operations = version_operations(client, item["kind"])
        action = {"action": f"registration {item['kind']}", "settings": item}
        if cfg.delete_registrations:
            action["request"] = sdk_request(builder, operations, name=item["name"], version=item["version"])
        else:
            action["note"] = "kept: Azure keeps registered versions after the endpoint goes; " \
                             "target.delete_registrations=true deletes them"
        actions.append(action)
    if not registrations:
        actions.append({"action": "registrations", "settings": {"recorded": []},
                        "note": f"this home (aideploy's home dir) registered no asset versions for {name!r}"})
    return actions


# ----------------------------------------------------------------------------- mode=update: blue/green

DEPLOYMENT_HEADER = "azureml-model-deployment"
"""Sent with a scoring request, it reaches that deployment whatever the endpoint's traffic says."""

DELETE_DEPLOYMENT = "online_deployments.begin_delete"
UPDATE_ENDPOINT = "online_endpoints.begin_create_or_update"
DEPLOYMENT_NAME_PATTERN = r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]"


def new_deployment_name(update_cfg: Any, old: str) -> str:
    """``update.new_deployment``, else the other colour: blue <-> green (green beside any other name)."""
    import re

    new = update_cfg.new_deployment or {"blue": "green", "green": "blue"}.get(old.lower(), "green")
    if new.lower() == old.lower():
        raise ConfigError(f"update.new_deployment={new} is the deployment being replaced",
                          hint="name the new deployment differently, or leave update.new_deployment=null "
                          "(blue <-> green)")
    if not re.fullmatch(DEPLOYMENT_NAME_PATTERN, new):
        raise ConfigError(f"update.new_deployment={new!r} is not a valid deployment name",
                          hint="3-32 letters, digits and dashes, starting with a letter")
    return new


def serving_deployment(traffic: dict[str, Any], endpoint: str) -> str:
    """The one deployment holding all the traffic: the one an update replaces."""
    live = {k: int(v) for k, v in (traffic or {}).items() if v and int(v)}
    if len(live) != 1 or next(iter(live.values())) != 100:
        raise DeployError(f"the endpoint {endpoint!r} splits its traffic {live or '(none)'}; mode=update replaces "
                          "the one deployment that takes all of it",
                          hint="finish or undo the earlier change first (az ml online-endpoint update --traffic "
                          "'<deployment>=100'), then run mode=update again")
    return next(iter(live))


def blue_green_steps(endpoint: Any, old: str, new: str, traffic_steps: list[int],
                     smoke: SmokeResult) -> list[tuple[str, Any]]:
    """What follows the smoke test of ``new``, as ``(SDK call, its argument)``: the decision itself.

    Passed: for each step, the whole endpoint with ``{old: 100 - step, new: step}`` traffic (what
    ``online_endpoints.begin_create_or_update`` re-sends), then the old deployment deleted.
    Failed: the traffic is left as it is and only the new deployment is deleted.
    """
    if not smoke.ok:
        return [(DELETE_DEPLOYMENT, {"name": new, "endpoint_name": endpoint.name})]
    steps: list[tuple[str, Any]] = []
    for share in traffic_steps:
        step = copy.deepcopy(endpoint)
        step.traffic = {old: 100 - int(share), new: int(share)}
        steps.append((UPDATE_ENDPOINT, step))
    steps.append((DELETE_DEPLOYMENT, {"name": old, "endpoint_name": endpoint.name}))
    return steps


def step_request(action: str, argument: Any, client: Any) -> dict[str, Any]:
    """The REST request the SDK sends for one of :func:`blue_green_steps`."""
    from azure.ai.ml.operations._online_endpoint_operations import _strip_zeroes_from_traffic

    from aideploy.azure_requests import WORKSPACE_LOCATION, sdk_request

    if action == UPDATE_ENDPOINT:
        sent = copy.deepcopy(argument)
        sent.traffic = _strip_zeroes_from_traffic(sent.traffic)  # as the SDK does before sending
        return sdk_request("online_endpoints_create_or_update", client.online_endpoints._online_operation,
                           sent._to_rest_online_endpoint(location=WORKSPACE_LOCATION), endpoint_name=argument.name)
    return sdk_request("online_deployments_delete", client.online_deployments._online_deployment,
                       endpoint_name=argument["endpoint_name"], deployment_name=argument["name"])


def step_action(action: str, argument: Any, client: Any) -> dict[str, Any]:
    if action == UPDATE_ENDPOINT:
        settings = {"name": argument.name, "traffic": dict(argument.traffic)}
    else:
        settings = {"name": argument["name"], "endpoint_name": argument["endpoint_name"]}
    return {"action": action, "settings": settings, "request": step_request(action, argument, client)}


def run_steps(client: Any, steps: list[tuple[str, Any]], timeout: float) -> None:
    """Carry out :func:`blue_green_steps` with the SDK, in order, each to its end."""
    for action, argument in steps:
        if action == UPDATE_ENDPOINT:
            _wait(client.online_endpoints.begin_create_or_update(argument), timeout,
                  f"traffic {dict(argument.traffic)}")
        else:
            _wait(client.online_deployments.begin_delete(**argument), timeout, f"deleting deployment {argument['name']}")


def deployment_delete_command(endpoint: str, deployment: str) -> str:
    """The az CLI command that deletes one deployment of an endpoint (mode=delete deletes the whole endpoint)."""
    return (f"az ml online-deployment delete --endpoint-name {endpoint} --name {deployment} "
            "--resource-group <resource group> --workspace-name <workspace> --yes")


def delete_deployment(client: Any, endpoint: str, deployment: str, timeout: float | None = None) -> bool:
    """Delete one deployment of an endpoint; False (not an error) when there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.online_deployments.begin_delete(name=deployment, endpoint_name=endpoint).result(timeout=timeout)
    except ResourceNotFoundError:
        return False
    return True


@hookimpl
def aideploy_update(cfg, ctx, name, model, environment, network, code, dataset):
    """Blue/green: the new version as a second deployment at 0% traffic, smoke-tested through the
    endpoint with ``azureml-model-deployment``, then the traffic moved in ``update.traffic_steps`` and
    the old deployment deleted; a failed smoke test deletes the new deployment and moves nothing."""
    from azure.core.exceptions import ResourceNotFoundError

    name = endpoint_name(ctx)
    update_cfg = ctx.cfg["update"]
    session = ctx.artifacts.get(SESSION_KEY) or connect(cfg)
    settings, client = session.settings, session.workspace
    try:
        current = client.online_endpoints.get(name)
    except ResourceNotFoundError:
        raise ConfigError(f"there is no online endpoint named {name!r} in the workspace to update",
                          hint="deploy it first (mode=serve target=managed_endpoint deployment_name=<name>); "
                          "mode=list shows the endpoints this home created") from None
    except Exception as exc:
        raise sdk_error(exc, f"reading the online endpoint {name!r}", settings, DeployError) from None
    old = serving_deployment(current.traffic, name)
    new = new_deployment_name(update_cfg, old)
    tags, description = azure_tags.describe(cfg, model, dataset)
    names = vault_secrets(ctx, code, model, name)  # the endpoint's own, made by its first deployment
    vault = service_vault(cfg, session, names)
    deployment = build_deployment(cfg, name, model, environment, code, ctx.cfg.encryption.plugin, ctx.cfg.network,
                                  tags, description, name=new, vault_settings=azure_secrets.deployment_settings(
                                      vault.url, names) if vault else None)
    # Journaled before it is created, like every Azure resource a run makes: a run killed from here
    # on leaves a deployment beside the serving one, and mode=gc says how to delete just that one.
    created = AzureResource(ctx, f"new deployment {new} of endpoint {name}",
                            lambda: delete_deployment(client, name, new, cfg.deploy_timeout), target=PLUGIN_NAME,
                            name=name, delete_command=deployment_delete_command(name, new))
    try:
        _wait(client.online_deployments.begin_create_or_update(deployment), cfg.deploy_timeout, f"deployment {new}")
        record_registrations(ctx.cfg.home, name, registered_assets(deployment))
    except Exception as exc:
        tail = deployment_logs(client, cfg, name, settings)
        message = settings.scrub(str(getattr(exc, "message", None) or exc))
        raise DeployError(f"the new deployment {new!r} of endpoint {name!r} failed: {message} (it is deleted; "
                          f"{old!r} keeps all the traffic)\n--- last lines of the deployment's log ---\n{tail}",
                          hint="try target=local with the same config to debug it here") from None
    try:
        key = endpoint_key(client, name)
    except Exception as exc:
        raise sdk_error(exc, f"getting the key of {name!r}", settings, DeployError) from None
    ctx.log.info("      smoke test: %d samples to %s through %s (header %s)", update_cfg.smoke_samples, new,
                 current.scoring_uri, DEPLOYMENT_HEADER)
    smoke = smoke_test(current.scoring_uri, {"Authorization": f"Bearer {key.reveal()}", DEPLOYMENT_HEADER: new},
                       model, dataset, update_cfg.smoke_samples, cfg.request_timeout)
    steps = blue_green_steps(current, old, new, list(update_cfg.traffic_steps), smoke)
    if smoke.ok:  # from the first traffic step on, the new deployment serves callers
        created.keep()
    try:
        run_steps(client, steps, cfg.deploy_timeout)
    except Exception as exc:
        raise sdk_error(exc, f"{'moving the traffic from ' + old + ' to ' + new if smoke.ok else 'deleting ' + new} "
                        f"on {name!r} (az ml online-endpoint show -n {name} says where it stopped)", settings,
                        DeployError) from None
    if not smoke.ok:
        created.keep()  # already deleted by the roll-back
        raise DeployError(f"the new deployment {new!r} of endpoint {name!r} failed its smoke test: {smoke.reason}; "
                          f"rolled back: {new!r} is deleted and {old!r} keeps all the traffic",
                          hint="compare the new model with the test set locally (target=local, same model)")
    return Endpoint(name, "managed_endpoint", current.scoring_uri, auth_key=key, keep_alive=False,
                    details={"deployment": new, "replaced": old, "smoke_test": smoke.summary(),
                             "traffic_steps": list(update_cfg.traffic_steps)})


def update_plan_actions(cfg: Any, ctx: Any, model: Any, environment: Any, code: Any) -> dict[str, Any]:
    """Every step of :func:`aideploy_update` as the SDK's requests: the path that passes the smoke test
    (``actions``) and the one that fails it (``rollback``), both from :func:`blue_green_steps`."""
    from aideploy.azure_requests import plan_client, sdk_request

    name = endpoint_name(ctx)
    update_cfg = ctx.cfg["update"]
    scheme, network_cfg = ctx.cfg.encryption.plugin, ctx.cfg.network
    old = cfg.deployment
    new = new_deployment_name(update_cfg, old)
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    current = build_endpoint(cfg, network_cfg, name, tags, description)  # stands for what online_endpoints.get returns
    current.traffic = {old: 100}
    names = vault_secrets(ctx, code, model, name)  # the endpoint's own: made when it was first deployed
    deployment = build_deployment(cfg, name, model, environment, code, scheme, network_cfg, tags, description,
                                  name=new, vault_settings=azure_secrets.deployment_settings(
                                      azure_secrets.plan_vault(cfg.key_vault).url, names))
    client = plan_client()
    endpoints = client.online_endpoints._online_operation
    actions = [workspace_action(cfg), workspace_read(client, cfg.key_vault, names)]  # as the deploy's plan begins
    actions.append({"action": "online_endpoints.get", "settings": {"name": name},
                    "request": sdk_request("online_endpoints_get", endpoints, endpoint_name=name),
                    "note": f"the deployment holding 100% of the traffic is replaced: {old!r} here "
                    "(target.deployment); a split traffic is refused"})
    actions += deployment_actions(deployment, client, name, new,
                                  f"beside {old!r}; the endpoint's traffic is not touched, so {new!r} gets 0%",
                                  sla_note(cfg))
    keys = {"key": "online_endpoints_list_keys", "aml_token": "online_endpoints_get_token"}.get(auth_mode(cfg))
    actions.append({"action": "online_endpoints.get_keys", "settings": {"name": name, "auth_mode": auth_mode(cfg)},
                    **({"request": sdk_request(keys, endpoints, endpoint_name=name)} if keys else
                       {"note": "aad_token: a Microsoft Entra token from the credential"})})
    samples = update_cfg.smoke_samples
    actions.append({"action": "smoke test", "settings": {
        "samples": samples, "passes": "every answer's predictions equal the model's in process"},
        "request": {"method": "POST", "url": "{scoringUri}", "repeat": f"once per test-set row, {samples} rows",
                    "headers": {"Content-Type": "application/json", "Authorization": "Bearer {key}",
                                DEPLOYMENT_HEADER: new},
                    "body": {"data": ["<one test-set row>"]}}})
    passed = blue_green_steps(current, old, new, list(update_cfg.traffic_steps), SmokeResult(samples, samples))
    failed = blue_green_steps(current, old, new, list(update_cfg.traffic_steps),
                              SmokeResult(samples, 0, "an answer disagreed"))
    actions += [step_action(a, arg, client) for a, arg in passed]
    return {"actions": actions, "rollback": [step_action(a, arg, client) for a, arg in failed],
            "old_deployment": old, "new_deployment": new}


@hookimpl
def aideploy_target_capabilities(cfg):
    from aideploy.targets import TargetCapabilities

    return TargetCapabilities(runs_here=False, cloud="azure", schemes=("plain", "fast", "seal"),
                              mlp_token_secret="key_vault", kernels="image")
