"""``target=aci``: Azure Container Instances through azureml-core (SDK v1), as seeds 000 and 004 do it.

``Model.register`` -> ``Environment.from_conda_specification`` (the environment stage's conda
yml) -> ``InferenceConfig`` (the same staged ``score.py`` the local target serves) ->
``AciWebservice.deploy_configuration`` (from config alone; with ``network=vnet`` the VNET, subnet
and region of seed 004) -> ``Model.deploy`` -> ``wait_for_deployment(show_output=True)``.

A plan (``dry_run=true``) shows each step with the request azureml-core sends to the workspace's
Model Management Service (see :mod:`aideploy.azure_requests`).

azureml-core is deprecated, but users still run it; ``target=managed_endpoint`` is its SDK v2
successor. The SDKs are optional (``pip install 'aideploy[azure]'``) and imported only inside
the functions below, so loading this plugin never needs them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from aideploy import azure_tags, hookimpl, plan_script
from aideploy.artifacts import Endpoint, Secret
from aideploy.azure_workspace import (ACI_DELEGATION, SESSION_KEY, AzureResource, Session, WorkspaceSettings,
                                      check_subnet_delegation, delete_by_name, delete_command, deployment_name,
                                      fetch_subnet, preflight_due, require_sdk, sdk_error, teardown_note, v1_auth)
from aideploy.azure_workspace import connect as connect_workspace
from aideploy.errors import ConfigError, DeployError
from aideploy.stages import Mode
from aideploy.update import smoke_test

PLUGIN_NAME = "aci"
SDK_MODULES = ("azureml.core", "azure.identity", "azure.mgmt.network")
PLAN_SDK_MODULES = ("azureml.core",)  # a plan builds the SDK's config objects and needs nothing else
# ACI web service names: 3 to 32 characters, lowercase letters, digits and dashes.
NAME_PATTERN = r"[a-z][a-z0-9-]{1,30}[a-z0-9]"
NAME_RULE = ("an ACI service name is 3-32 characters: lowercase letters, digits and dashes, starting with a "
             "letter and ending with a letter or digit")


# ----------------------------------------------------------------------------- config -> SDK objects


_VNET_KEYS = {"vnet_name": "the VNET's name", "subnet_name": "the subnet's name", "location": "the VNET's region"}


def vnet_settings(network_cfg: Any) -> dict[str, str]:
    """``location``, ``vnet_name`` and ``subnet_name`` for a VNET deployment; empty on a public network.

    All three are the user's: no VNET or subnet name is guessed, and ``AciWebservice.deploy_configuration``
    silently puts a VNET deployment in westus when no location is given (seed 004).
    """
    if network_cfg.plugin != "vnet":
        return {}
    missing = [key for key in _VNET_KEYS if not network_cfg.get(key)]
    if missing:
        raise ConfigError(
            "target=aci with network=vnet needs " + ", ".join(f"{_VNET_KEYS[k]} (network.{k})" for k in missing)
            + ": not set, and aideploy does not guess them",
            hint="name the existing VNET, its subnet delegated to ACI and their region, e.g. network.vnet_name=myvnet "
            "network.subnet_name=aci-subnet network.location=japaneast (without a region azureml-core would "
            "silently deploy to westus)")
    return {key: str(network_cfg[key]) for key in ("location", "vnet_name", "subnet_name")}


@contextlib.contextmanager
def without_git_tracking() -> Any:
    """azureml-core adds the working directory's git state (``azureml.git.*``: the checkout's local path,
    branch, commit, dirty flag) to every service it creates or updates; aideploy sends only
    ``target.properties``. Its tracking registry is emptied for the duration of the call."""
    from azureml._base_sdk_common.tracking import global_tracking_info_registry

    providers = global_tracking_info_registry.providers
    global_tracking_info_registry.providers = []
    try:
        yield
    finally:
        global_tracking_info_registry.providers = providers


def deploy_configuration(cfg: Any, network_cfg: Any, tags: dict[str, str], description: str) -> Any:
    """``AciWebservice.deploy_configuration(...)`` from config and the run (:func:`aideploy.azure_tags.describe`):
    needs no workspace or credential."""
    from azureml.core.webservice import AciWebservice
    from azureml.exceptions import WebserviceException

    try:
        return AciWebservice.deploy_configuration(
            cpu_cores=cfg.cpu_cores, memory_gb=cfg.memory_gb, tags=tags, description=description,
            properties=azure_tags.properties(cfg) or None, auth_enabled=cfg.auth_enabled, **vnet_settings(network_cfg))
    except WebserviceException as exc:  # the SDK's own validation, e.g. cpu_cores <= 0
        raise ConfigError(f"target=aci: {exc.message}", hint="fix the target.* setting named above") from None


def create_payload(deploy_config: Any, name: str) -> dict[str, Any]:
    """The SDK's own serialised form of the deploy configuration, as readable settings.

    ``environmentImageRequest`` is null here: ``Model.deploy`` builds it at deploy time (the
    plan's create request has it, see :func:`aideploy_plan`).
    """
    try:
        with without_git_tracking():
            return deploy_config._build_create_payload(name, None)
    except Exception:  # a private method: if a later SDK changes it, fall back to its attributes
        return {k: v for k, v in vars(deploy_config).items() if not k.startswith("_")}


def build_environment(environment: Any) -> Any:
    """``Environment.from_conda_specification`` on the environment stage's conda yml, without the
    ``EXAMPLE_ENV_VAR=EXAMPLE_VALUE`` variable azureml-core puts in every new Environment."""
    from azureml.core import Environment

    env = Environment.from_conda_specification(environment.name, str(environment.conda_file))
    env.environment_variables = {}
    return env


def environment_dict(env: Any) -> dict[str, Any]:
    """The SDK's own serialised form of an Environment (what it registers)."""
    from azureml.core import Environment

    try:
        return Environment._serialize_to_dict(env)
    except Exception:  # a private method: fall back to what identifies the environment
        return {"name": env.name, "python": {"condaDependencies": env.python.conda_dependencies._conda_dependencies}}


def service_settings(code_settings: dict[str, str]) -> dict[str, str]:
    """The service's settings as ACI runs it: a limits store the config puts in a blob container is counted in
    the container's own server directory instead (``AIDEPLOY_LIMITS_STORE=server``).

    azureml-core's ACI has no managed identity, so no secret store can give the service the blob account's
    key without putting it in the container group's plain environment (readable by anyone who may read
    the workspace's services). It does not need one: an ACI service is one container, whose workers
    share one server directory, so an SQLite file there counts for the whole deployment, as the MLP
    token secret the server generates there seals tokens for all of it (:mod:`aideploy_scoring.secret_settings`).
    A restarted container starts both anew: budgets reset, tokens in flight are refused.
    """
    from aideploy_scoring.settings import SERVER_STORE

    if "AIDEPLOY_LIMITS_STORE" not in code_settings:
        return dict(code_settings)
    return {**code_settings, "AIDEPLOY_LIMITS_STORE": SERVER_STORE}


def inference_config(code: Any, env: Any) -> Any:
    """``InferenceConfig`` for the staged source directory (the SDK checks the entry script exists)."""
    from azureml.core.model import InferenceConfig

    env.environment_variables.update(service_settings(code.settings))  # in place: the setter is deprecated
    return InferenceConfig(source_directory=str(code.source_dir), entry_script=code.entry_script, environment=env)


def model_register_args(model: Any, tags: dict[str, str], description: str) -> dict[str, Any]:
    """The arguments of ``Model.register`` besides the workspace: the run's tags and description."""
    return {"model_path": str(model.path), "model_name": model.name, "tags": tags, "description": description}


def register_model(workspace: Any, model: Any, tags: dict[str, str], description: str) -> Any:
    """``Model.register`` from the model's own directory: azureml-core (1.60 on) refuses a
    ``model_path`` outside the current directory, and aideploy's registry is under ``home``."""
    from azureml.core import Model

    args = model_register_args(model, tags, description)
    path = Path(args["model_path"]).resolve()
    with contextlib.chdir(path.parent):
        return Model.register(workspace=workspace, **{**args, "model_path": path.name})


def service_name(ctx: Any) -> str:
    return deployment_name(ctx, NAME_PATTERN, NAME_RULE)


def vnet_resource_group(ctx: Any, settings: WorkspaceSettings | None) -> tuple[str, str]:
    """(value, label) of the VNET's resource group: ``network.resource_group`` or the workspace's."""
    if ctx.cfg.network.resource_group:
        return str(ctx.cfg.network.resource_group), str(ctx.cfg.network.resource_group)
    label = settings.label("resource_group") if settings else f"${ctx.cfg.target.workspace.resource_group_env}"
    return (settings.resource_group if settings else ""), label


# ----------------------------------------------------------------------------- workspace


def _open_workspace(settings: WorkspaceSettings, cred: Any) -> Any:
    from azureml.core import Workspace

    # azureml-core logs its progress at INFO with ids and paths; the run's log keeps its warnings only.
    logging.getLogger("azureml").setLevel(logging.WARNING)
    # What Workspace.from_config() does once it has read config.json.
    return Workspace.get(settings.workspace_name, auth=v1_auth(cred),
                         subscription_id=settings.subscription_id, resource_group=settings.resource_group)


def connect(cfg: Any) -> Session:
    """The workspace, opened with SDK v1 (``Workspace``); each failure is a clear error."""
    return connect_workspace(cfg.workspace, PLUGIN_NAME, _open_workspace)


def check_subnet(ctx: Any, session: Session) -> None:
    """Seed 004's prerequisite: the subnet exists and is delegated to ACI (azure-mgmt-network)."""
    net = ctx.cfg.network
    rg, rg_label = vnet_resource_group(ctx, session.settings)
    try:
        subnet = fetch_subnet(session.credential, session.settings, rg, net.vnet_name, net.subnet_name)
    except Exception as exc:
        raise sdk_error(exc, f"reading subnet {net.subnet_name!r} of VNET {net.vnet_name!r}", session.settings,
                        hint="the credential needs read access to the VNET (e.g. Network Contributor), or "
                        "skip the check with target.check_subnet=false") from None
    check_subnet_delegation(subnet, resource_group=rg_label, vnet_name=net.vnet_name, subnet_name=net.subnet_name,
                            address_range=net.address_range)


def delete_service(workspace: Any, name: str) -> bool:
    """``Webservice(ws, name).delete()``; False (not an error) when there is no such service."""
    from azureml.core.webservice import Webservice
    from azureml.exceptions import WebserviceException

    try:
        service = Webservice(workspace, name)
    except WebserviceException as exc:
        if "WebserviceNotFound" in str(exc):
            return False
        raise
    service.delete()
    return True


def service_logs(service: Any, lines: int, settings: WorkspaceSettings) -> str:
    """The tail of the service's log, or why it could not be fetched."""
    try:
        text = service.get_logs(num_lines=lines) or "(the log is empty)"
    except Exception as exc:
        text = f"(could not fetch the service's log: {type(exc).__name__}: {exc})"
    return settings.scrub("\n".join(str(text).rstrip().splitlines()[-lines:]))


# ----------------------------------------------------------------------------- hooks


@hookimpl
def aideploy_before_stage(stage, ctx):
    """Pre-flight, before the data stage: config, SDK, workspace, credential and subnet, in that order.

    Everything that can make the deploy stage fail for a reason known up front fails here,
    before a model is trained. The connected workspace is kept for the deploy stage.
    """
    if not preflight_due(stage, ctx, PLUGIN_NAME):
        return
    cfg = ctx.cfg.target
    vnet = vnet_settings(ctx.cfg.network)  # a config error needs nothing installed to be reported
    service_name(ctx)
    require_sdk(PLUGIN_NAME, *(PLAN_SDK_MODULES if ctx.cfg.dry_run else SDK_MODULES))
    if ctx.cfg.dry_run:
        return
    session = connect(cfg)
    if vnet and cfg.check_subnet:
        check_subnet(ctx, session)
    ctx.artifacts[SESSION_KEY] = session
    ctx.log.info("      aci: workspace from %s; signed in%s", session.settings.source,
                 "; subnet delegated to ACI" if vnet and cfg.check_subnet else "")


@hookimpl
def aideploy_deploy(cfg, ctx, model, environment, network, code):
    from azureml.core import Model

    vnet = vnet_settings(ctx.cfg.network)
    name = service_name(ctx)
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    deploy_config = deploy_configuration(cfg, ctx.cfg.network, tags, description)
    session = ctx.artifacts.get(SESSION_KEY) or connect(cfg)
    settings, workspace = session.settings, session.workspace
    config = inference_config(code, build_environment(environment))
    try:
        registered = register_model(workspace, model, tags, description)
    except Exception as exc:
        raise sdk_error(exc, f"Model.register({model.name!r})", settings, DeployError) from None
    # Journaled before Model.deploy, but armed (deleted at teardown) only once it has returned:
    # before that, the name may belong to a service this run did not create (overwrite=false
    # refuses it), which must not be deleted. mode=serve keeps a service that came up; a broken
    # one is not worth keeping (its log is in the error).
    created = AzureResource(ctx, f"ACI service {name}", lambda: delete_service(workspace, name), target=PLUGIN_NAME,
                            name=name, delete_command=delete_command(PLUGIN_NAME, name), armed=False)
    try:
        with without_git_tracking():
            service = Model.deploy(workspace, name, [registered], inference_config=config,
                                   deployment_config=deploy_config, overwrite=cfg.overwrite)
    except Exception as exc:
        raise sdk_error(exc, f"Model.deploy({name!r})", settings, DeployError,
                        hint="if the name is already in use: target.overwrite=true replaces that service, or "
                        "choose another deployment_name") from None
    created.arm()
    try:
        service.wait_for_deployment(show_output=True, timeout_sec=cfg.deploy_timeout)
    except Exception as exc:
        tail = service_logs(service, cfg.log_tail_lines, settings)
        message = settings.scrub(str(getattr(exc, "message", None) or exc))
        raise DeployError(f"the ACI deployment {name!r} failed: {message}\n"
                          f"--- last lines of the service's log (get_logs) ---\n{tail}",
                          hint="a failing init() usually means the model file or an import is broken; try "
                          "target=local with the same config to debug it here") from None
    key = None
    if cfg.auth_enabled:
        try:
            primary, _secondary = service.get_keys()
        except Exception as exc:
            raise sdk_error(exc, f"getting the keys of {name!r}", settings, DeployError) from None
        key = Secret(primary)
    if ctx.mode is Mode.serve:
        created.keep()
    if ctx.mode is Mode.serve and key:
        ctx.log.info("      the service's key: Webservice(ws, %r).get_keys() or the Consume tab in ml.azure.com "
                     "(mode=predict reads it from $%s)", name, ctx.cfg.scoring_key_env)
    return Endpoint(name, "aci", service.scoring_uri, auth_key=key, keep_alive=False,
                    details={"auth": bool(key), "location": vnet.get("location", "workspace region"),
                             **({"vnet": f"{vnet['vnet_name']}/{vnet['subnet_name']}"} if vnet else {})})


# ----------------------------------------------------------------------------- plans: the SDK's requests

UPLOAD_NOTE = ("Model.register first uploads the model's files to the workspace's artifact store "
               "(LocalUpload/{container}/, the container named at upload time), then registers them as this asset")
ENVIRONMENT_NOTE = ("not registered on its own: azureml-core sends it inline, as environmentImageRequest.environment "
                    "of the service's create (or update) request, with AZUREML_ENTRY_SCRIPT and "
                    "AZUREML_SOURCE_DIRECTORY added")
DEPLOY_NOTE = ("before it, Model.deploy uploads the generated driver script and the source directory (as .tar.gz) "
               "to the artifact store ({driverScript}, {archive}), and asks MMS to validate the request and, unless "
               "overwrite, the name and the ACI quota (POST .../services/validate...; a failed validation call is "
               "ignored); then wait_for_deployment polls GET .../operations/{operationId} until the service is up")


def new_model_ids(model: Any) -> list[str]:
    """The registered model's id as ``Model.deploy`` sends it: ``name:version``, the version assigned by MMS."""
    return [f"{model.name}:{{modelVersion}}"]


def update_args(cfg: Any, tags: dict[str, str], description: str) -> dict[str, Any]:
    """The new version's tags, description and ``target.properties`` (None when there are none), for the
    ``Webservice.update`` that follows a passed smoke test: a roll-back then never has them to undo."""
    return {"tags": tags, "properties": azure_tags.properties(cfg) or None, "description": description}


def update_patch(config: Any, model_ids: list[str]) -> list[dict[str, Any]]:
    """The JSON patch ``AciWebservice.update(models=..., inference_config=...)`` sends
    (``azureml/core/webservice/aci.py``), under :func:`without_git_tracking`: a service deployed
    from an environment gets ``replace /environmentImageRequest``."""
    from aideploy.azure_requests import v1_environment_image_request

    return [{"op": "replace", "path": "/environmentImageRequest", "value": v1_environment_image_request(config, model_ids)}]


def metadata_patch(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch ``AciWebservice.update(**update_args(...))`` sends: the tags replaced, one
    ``add /properties/<key>`` per property, the description replaced (in the SDK's order)."""
    patch = [{"op": "replace", "path": "/kvTags", "value": args["tags"]}]
    patch += [{"op": "add", "path": f"/properties/{key}", "value": value}
              for key, value in (args["properties"] or {}).items()]
    return patch + [{"op": "replace", "path": "/description", "value": args["description"]}]


def registration_actions(model: Any, tags: dict[str, str], description: str) -> list[dict[str, Any]]:
    """``Model.register`` as plan actions: the asset its upload becomes, then the model on that asset."""
    from aideploy.azure_requests import v1_model_registration

    args = model_register_args(model, tags, description)
    asset, register = v1_model_registration(Path(args["model_path"]), args["model_name"], args["tags"],
                                            args["description"])
    return [{"action": "AssetsClient.create_asset", "settings": {"name": args["model_name"],
                                                                 "model_path": args["model_path"]},
             "request": asset, "note": UPLOAD_NOTE},
            {"action": "Model.register", "settings": args, "request": register,
             "note": "{assetId} is the id the asset's create returns; MMS assigns the version"}]


def service_actions(name: str, auth: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(``get_keys`` when the service takes a key, ``Webservice.delete``) as plan actions, with their requests."""
    from aideploy.azure_requests import mms_request

    keys = [{"action": "Webservice.get_keys", "settings": {"name": name},
             "request": mms_request("POST", f"/services/{name}/listkeys")}] if auth else []
    return keys, {"action": "Webservice.delete", "settings": {"name": name},
                  "request": mms_request("DELETE", f"/services/{name}"),
                  "note": "MMS first validates the delete (POST .../services/validate, failures ignored)"}


def read_service_action(name: str, reads: str) -> dict[str, Any]:
    """``Webservice(ws, name)`` as a plan action: ``Webservice._get`` reads the service with its models."""
    from aideploy.azure_requests import mms_request

    return {"action": "Webservice", "settings": {"name": name, "reads": reads},
            "request": mms_request("GET", f"/services/{name}", query={"expand": "true"})}


@hookimpl
def aideploy_plan(cfg, ctx, model, environment, code):
    """What the deploy stage would do, as azureml-core's own objects and requests; no workspace, credential
    or network."""
    require_sdk(PLUGIN_NAME, *PLAN_SDK_MODULES)
    import azureml.core

    from aideploy.azure_requests import mms_request, v1_environment_image_request

    vnet = vnet_settings(ctx.cfg.network)
    name = service_name(ctx)
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    deploy_config = deploy_configuration(cfg, ctx.cfg.network, tags, description)
    # The code is staged locally (nothing in Azure), so InferenceConfig validates the real entry
    # script and the plan points at exactly the directory a deploy would upload.
    env = build_environment(environment)
    config = inference_config(code, env)
    ws = cfg.workspace
    prepare: list[dict[str, Any]] = [
        {"action": "Workspace.get", "settings": {
            "from": f"target.workspace.config_file={ws.config_file}" if ws.config_file else
            f"env vars {ws.subscription_id_env}, {ws.resource_group_env}, {ws.workspace_name_env} if all set, "
            "else config.json as Workspace.from_config() finds it",
            "credential": "azure.identity.DefaultAzureCredential"}},
    ]
    if vnet and cfg.check_subnet:
        _, rg_label = vnet_resource_group(ctx, None)
        prepare.append({"action": "NetworkManagementClient.subnets.get", "settings": {
            "resource_group_name": rg_label, "virtual_network_name": vnet["vnet_name"],
            "subnet_name": vnet["subnet_name"], "required_delegation": ACI_DELEGATION}})
    prepare += registration_actions(model, tags, description)
    prepare.append({"action": "Environment.from_conda_specification", "settings": environment_dict(env),
                    "note": ENVIRONMENT_NOTE})
    sdk = {"target": "aci", "sdk": f"azureml-core {azureml.core.VERSION}"}
    if ctx.mode is Mode.update:
        return with_script(ctx, cfg, {**sdk, "mode": "update", **update_plan_actions(
            cfg, ctx, model, env, config, prepare, update_args(cfg, tags, description))})
    keys, delete = service_actions(name, bool(cfg.auth_enabled))
    if ctx.mode is Mode.delete:  # delete_service: Webservice(ws, name), then its delete()
        delete["settings"]["when"] = "now: mode=delete (a name that is not there is a warning)"
        return with_script(ctx, cfg, {**sdk, "mode": "delete", "actions": [
            prepare[0], read_service_action(name, "whether it exists"), delete]})
    delete["settings"]["when"] = teardown_note(ctx, name)
    # Model._deploy_with_environment_image_request (azureml/core/model.py): the configuration's own
    # payload around the environment image request. No fallback here: a body the SDK did not build
    # is not the request.
    with without_git_tracking():
        body = deploy_config._build_create_payload(name, v1_environment_image_request(config, new_model_ids(model)),
                                                   overwrite=bool(cfg.overwrite))
    actions = [
        *prepare,
        {"action": "InferenceConfig", "settings": {"source_directory": config.source_directory,
                                                   "entry_script": config.entry_script,
                                                   "environment": env.name}},
        {"action": "AciWebservice.deploy_configuration", "settings": create_payload(deploy_config, name)},
        {"action": "Model.deploy", "settings": {"name": name, "models": [model.name], "overwrite": cfg.overwrite,
                                                "wait_for_deployment": {"show_output": True,
                                                                        "timeout_sec": cfg.deploy_timeout},
                                                "get_keys": bool(cfg.auth_enabled)},
         "request": mms_request("POST", "/services", body), "note": DEPLOY_NOTE},
        *keys,
        delete,
    ]
    return with_script(ctx, cfg, {**sdk, "actions": actions})


SCRIPT_REFUSED = ("target=aci's requests carry values only azureml-core makes as it goes (its uploads to the "
                  "artifact store: {container}, {driverScript}, {archive}; then {assetId}, {modelVersion}): "
                  "run them with aideploy target=aci, or use --what-if to read them")


def with_script(ctx: Any, cfg: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """``plan``, its plan.sh written beside plan.json (sending only when every value is known)."""
    text = json.dumps(plan)
    unknown = any(f"{{{name}}}" in text for name in ("assetId", "modelVersion", "driverScript", "archive"))
    plan_script.write(ctx.output_dir, plan, cfg.workspace, refused=SCRIPT_REFUSED if unknown else "")
    return plan


ROLLBACK_NOTE = ("an ACI service holds one version: Webservice.update replaces it in place, so a failed smoke "
                 "test re-deploys the models the service had before, with this run's inference config")
PREVIOUS_MODELS = "{previousModelId}"
"""Stands for the ids of the models the service had (``Webservice.models``, read before the update), one each."""


def update_plan_actions(cfg: Any, ctx: Any, model: Any, env: Any, config: Any,
                        prepare: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """``mode=update``: ``Webservice.update(models=..., inference_config=...)`` on the existing service,
    a smoke test, and the roll-back a failed one takes, each with the request azureml-core sends."""
    from aideploy.azure_requests import mms_request

    name = service_name(ctx)
    samples = ctx.cfg["update"].smoke_samples
    inference = {"source_directory": config.source_directory, "entry_script": config.entry_script,
                 "environment": env.name}
    wait = {"action": "Webservice.wait_for_deployment",
            "settings": {"show_output": True, "timeout_sec": cfg.deploy_timeout},
            "note": "polls GET .../operations/{operationId} (from the update's answer) until the service is up"}
    keys, _ = service_actions(name, bool(cfg.auth_enabled))
    actions = [
        *prepare[:1],
        read_service_action(name, "its models, kept for a roll-back"),
        *prepare[1:],
        {"action": "Webservice.update", "settings": {"name": name, "models": [f"{model.name} (registered above)"],
                                                     "inference_config": inference},
         "request": mms_request("PATCH", f"/services/{name}", update_patch(config, new_model_ids(model)))},
        wait,
        *keys,
        {"action": "smoke test", "settings": {
            "samples": samples, "passes": "every answer's predictions equal the model's in process",
            "request": {"method": "POST", "url": "{scoring_uri}", "repeat": f"once per test-set row, {samples} rows",
                        "headers": {"Content-Type": "application/json",
                                    **({"Authorization": "Bearer {key}"} if cfg.auth_enabled else {})},
                        "body": {"data": ["<one test-set row>"]}}}},
        {"action": "Webservice.update", "settings": {"name": name, **args},
         "note": "once the smoke test passed: the new version's tags and description",
         "request": mms_request("PATCH", f"/services/{name}", metadata_patch(args))},
    ]
    rollback = [
        {"action": "Webservice.update", "settings": {"name": name, "models": "<the models it had before>",
                                                     "inference_config": inference}, "note": ROLLBACK_NOTE,
         "request": mms_request("PATCH", f"/services/{name}", update_patch(config, [PREVIOUS_MODELS]))},
        wait,
    ]
    return {"actions": actions, "rollback": rollback}


@hookimpl
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    return network.call(ctx.http_client(endpoint, cfg.request_timeout).post, requests.items)


@hookimpl
def aideploy_delete(cfg, ctx, name):
    require_sdk(PLUGIN_NAME, *SDK_MODULES)
    session = connect(cfg)
    return delete_by_name(ctx, session, "ACI service", name, lambda: delete_service(session.workspace, name))


@hookimpl
def aideploy_update(cfg, ctx, name, model, environment, network, code, dataset):
    """``Webservice.update(models=..., inference_config=...)`` on the existing service, then a smoke test;
    a failed one re-deploys the models the service had before (ACI holds one version at a time)."""
    from azureml.core.webservice import Webservice
    from azureml.exceptions import WebserviceException

    name = service_name(ctx)
    session = ctx.artifacts.get(SESSION_KEY) or connect(cfg)
    settings, workspace = session.settings, session.workspace
    try:
        service = Webservice(workspace, name)
    except WebserviceException as exc:
        if "WebserviceNotFound" in str(exc):
            raise ConfigError(f"there is no ACI service named {name!r} in the workspace to update",
                              hint="deploy it first (mode=serve target=aci deployment_name=<name>)") from None
        raise sdk_error(exc, f"reading the service {name!r}", settings, DeployError) from None
    previous = list(service.models or [])
    config = inference_config(code, build_environment(environment))
    tags, description = azure_tags.describe(cfg, model, dataset)
    args = update_args(cfg, tags, description)
    try:
        registered = register_model(workspace, model, tags, description)
        with without_git_tracking():
            service.update(models=[registered], inference_config=config)
        service.wait_for_deployment(show_output=True, timeout_sec=cfg.deploy_timeout)
    except Exception as exc:
        tail = service_logs(service, cfg.log_tail_lines, settings)
        message = settings.scrub(str(getattr(exc, "message", None) or exc))
        raise DeployError(f"updating the ACI service {name!r} failed: {message}\n"
                          f"--- last lines of the service's log (get_logs) ---\n{tail}",
                          hint="try target=local with the same config to debug it here") from None
    key = Secret(service.get_keys()[0]) if cfg.auth_enabled else None
    headers = {"Authorization": f"Bearer {key.reveal()}"} if key else {}
    smoke = smoke_test(service.scoring_uri, headers, model, dataset, ctx.cfg["update"].smoke_samples,
                       cfg.request_timeout)
    if not smoke.ok:
        try:
            with without_git_tracking():
                service.update(models=previous, inference_config=config)
            service.wait_for_deployment(show_output=True, timeout_sec=cfg.deploy_timeout)
            rolled = f"rolled back to {', '.join(m.name + ':' + str(m.version) for m in previous) or 'no model'}"
        except Exception as exc:
            rolled = f"the roll-back failed too: {settings.scrub(str(exc))}"
        raise DeployError(f"the updated ACI service {name!r} failed its smoke test: {smoke.reason}; {rolled}",
                          hint="compare the new model with the test set locally (target=local, same model)")
    try:
        with without_git_tracking():
            service.update(**args)
    except Exception as exc:
        raise sdk_error(exc, f"setting the tags and description of {name!r} (it serves the new model)", settings,
                        DeployError) from None
    return Endpoint(name, "aci", service.scoring_uri, auth_key=key, keep_alive=False,
                    details={"auth": bool(key), "smoke_test": smoke.summary()})


@hookimpl
def aideploy_target_capabilities(cfg):
    from aideploy.targets import TargetCapabilities

    return TargetCapabilities(runs_here=False, cloud="azure", schemes=("plain", "fast", "seal"),
                              mlp_token_secret="server")
