"""``target=batch_endpoint``: an Azure ML batch endpoint, planned through azure-ai-ml (SDK v2).

For folders of files of any size scored in Azure: a compute cluster (``AmlCompute``, scaling to
zero), a ``BatchEndpoint`` and one ``ModelBatchDeployment`` running aideploy's batch scorer
(``aideploy_scoring/batch_score.py``: ``init()`` and ``run(mini_batch)`` on file paths, the same
model adapters and schema as the online ``score.py``) with the environment stage's conda yml,
made the endpoint's default. A job is then one ``az ml batch-endpoint invoke`` on a folder.

Plans only (``dry_run=true``): ``plan.json`` holds every request the SDK would send, as the
managed endpoint's does (:mod:`aideploy.azure_requests`), and ``plan.sh`` sends them with
``az rest``; aideploy itself creates nothing here. Plain scoring only: the rows are read in
Azure, so there is nothing to encrypt them from.

azure-ai-ml is optional (``pip install 'aideploy[azure]'``) and imported only inside the
functions below.
"""

from __future__ import annotations

import warnings
from typing import Any

from aideploy import azure_tags, hookimpl, plan_script
from aideploy.azure_workspace import deployment_name, require_sdk, teardown_note
from aideploy.errors import ConfigError
from aideploy.stages import Mode
from aideploy_plugins.target_managed import _quiet_sdk_logs

PLUGIN_NAME = "batch_endpoint"
PLAN_SDK_MODULES = ("azure.ai.ml",)
# Batch endpoint names: as online ones, 3 to 32 letters, digits and dashes, unique in the region.
NAME_PATTERN = r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]"
NAME_RULE = ("a batch endpoint name is 3-32 characters: letters, digits and dashes, starting with a letter and "
             "ending with a letter or digit, and unique in its Azure region")
BATCH_SCORE = "aideploy_scoring/batch_score.py"
# What batch_score.py reads files with; azureml-core is what Azure's batch runtime needs in the image.
RUNTIME = ["pandas>=2", "pyarrow>=14", "azureml-core>=1.57"]


def endpoint_name(ctx: Any) -> str:
    return deployment_name(ctx, NAME_PATTERN, NAME_RULE)


def check_config(ctx: Any) -> None:
    """What a batch endpoint cannot do with this config, found before any stage and without the SDK."""
    if ctx.cfg.encryption.plugin != "plain":
        raise ConfigError(f"target=batch_endpoint scores files in Azure, where they are read in clear; "
                          f"encryption={ctx.choices.get('encryption', ctx.cfg.encryption.plugin)} has nothing to "
                          "hide them from", hint="drop encryption=... (encrypted scoring of files: mode=predict "
                          "predict.engine=ray against an online endpoint, encryption in the client's workers)")
    if ctx.mode is Mode.update:
        raise ConfigError("target=batch_endpoint has no mode=update: a batch deployment serves jobs, not traffic",
                          hint="plan another deployment beside it (target.deployment=<new name>), which becomes the "
                          "endpoint's default; jobs running on the old one finish there")
    if not ctx.cfg.dry_run:
        raise ConfigError(f"target=batch_endpoint is planned, not deployed, by aideploy (mode={ctx.mode.value})",
                          hint="add dry_run=true: plan.json lists every request, and plan.sh sends them with az rest "
                          "(az login first)")
    network = ctx.cfg.network
    if network.plugin == "vnet" and not (network.vnet_name and network.subnet_name):
        raise ConfigError("network=vnet with target=batch_endpoint puts the compute cluster in your subnet, and "
                          "network.vnet_name or network.subnet_name is not given",
                          hint="add network.vnet_name=<vnet> network.subnet_name=<subnet> (network.resource_group "
                          "if the VNET is in another resource group than the workspace)")


# ----------------------------------------------------------------------------- config -> SDK entities


def build_compute(cfg: Any, network_cfg: Any, tags: dict[str, str], description: str) -> Any:
    """The ``AmlCompute`` cluster, as ``compute.begin_create_or_update`` sends it (location and subnet filled
    as the SDK fills them: the workspace's region, the subnet's ARM id in the workspace's or the given resource
    group)."""
    from azure.ai.ml.entities import AmlCompute, NetworkSettings

    from aideploy.azure_requests import SCOPE, WORKSPACE_LOCATION

    _quiet_sdk_logs()
    network = None
    if network_cfg.plugin == "vnet":
        network = NetworkSettings(vnet_name=network_cfg.vnet_name, subnet=network_cfg.subnet_name)
    compute = AmlCompute(name=cfg.compute, size=cfg.instance_type, min_instances=0, max_instances=cfg.max_instances,
                         idle_time_before_scale_down=cfg.idle_seconds, network_settings=network, tags=tags,
                         description=description)
    compute.location = WORKSPACE_LOCATION
    compute._set_full_subnet_name(SCOPE["subscription_id"], network_cfg.get("resource_group") or
                                  SCOPE["resource_group_name"])
    return compute


# The values as the REST spec spells them: azure-ai-ml camel-cases its own defaults ("aad_token" -> "aadToken") and
# passes a logging level through as given ("info"), where the spec's enums are "AADToken" and "Info"; given in the
# spec's spelling, the SDK sends them as they are.
AUTH_MODE = "AADToken"  # Microsoft Entra tokens: the only auth a batch endpoint takes
LOGGING_LEVELS = {"info": "Info", "warning": "Warning", "debug": "Debug"}


def build_endpoint(name: str, tags: dict[str, str], description: str, default: str | None = None) -> Any:
    """The ``BatchEndpoint``; ``default`` names its default deployment."""
    from azure.ai.ml.entities import BatchEndpoint

    _quiet_sdk_logs()
    return BatchEndpoint(name=name, tags=tags, description=description, auth_mode=AUTH_MODE,
                         defaults={"deployment_name": default} if default else None)


def build_deployment(cfg: Any, endpoint: str, model: Any, environment: Any, code: Any, tags: dict[str, str],
                     description: str) -> Any:
    """The ``ModelBatchDeployment``: the registered model, the conda environment, aideploy's batch scorer (or a
    custom scoring script), and the job settings of ``target``."""
    from azure.ai.ml.entities import (BatchRetrySettings, CodeConfiguration, Environment, Model,
                                      ModelBatchDeployment, ModelBatchDeploymentSettings, ResourceConfiguration)

    _quiet_sdk_logs()
    settings = ModelBatchDeploymentSettings(
        mini_batch_size=cfg.mini_batch_size,
        max_concurrency_per_instance=cfg.max_concurrency_per_instance,
        output_action=str(getattr(cfg.output_action, "value", cfg.output_action)),
        output_file_name=cfg.output_file_name, error_threshold=cfg.error_threshold,
        retry_settings=BatchRetrySettings(max_retries=cfg.retry.max_retries, timeout=cfg.retry.timeout),
        logging_level=LOGGING_LEVELS[str(getattr(cfg.logging_level, "value", cfg.logging_level))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ModelBatchDeployment(
            name=cfg.deployment, endpoint_name=endpoint, description=description, tags=tags,
            properties=azure_tags.properties(cfg),
            model=Model(path=str(model.path), description=description, tags=tags),
            environment=Environment(conda_file=str(environment.conda_file), image=cfg.image),
            code_configuration=CodeConfiguration(code=str(code.source_dir),
                                                 scoring_script=BATCH_SCORE if code.builtin else code.entry_script),
            compute=cfg.compute, resources=ResourceConfiguration(instance_count=cfg.instance_count),
            settings=settings)


# ----------------------------------------------------------------------------- the plan


def compute_actions(cfg: Any, ctx: Any, client: Any, tags: dict[str, str], description: str) -> list[dict]:
    """The cluster's create (``target.create_compute``), else a read that it exists."""
    from aideploy.azure_requests import sdk_request
    from aideploy_plugins.target_managed import serialized

    operations = client.compute._operation
    if not cfg.create_compute:
        return [{"action": "compute.get", "settings": {"name": cfg.compute},
                 "request": sdk_request("compute_get", operations, compute_name=cfg.compute),
                 "note": "target.create_compute=false: the deployment runs on this existing cluster"}]
    compute = build_compute(cfg, ctx.cfg.network, tags, description)
    return [{"action": "compute.begin_create_or_update", "settings": serialized(compute),
             "request": sdk_request("compute_create_or_update", operations, compute._to_rest_object(),
                                    compute_name=cfg.compute),
             "note": "min_instances=0: the cluster costs nothing while no job runs"
                     + ("; its nodes join your subnet (network=vnet)" if ctx.cfg.network.plugin == "vnet" else "")}]


def deployment_actions(deployment: Any, client: Any, endpoint: str) -> list[dict]:
    """The datastore reads, the asset uploads and registrations, and the deployment's create, as plan actions."""
    from azure.ai.ml.constants._common import AzureMLResourceType
    from azure.ai.ml.operations._operation_orchestrator import OperationOrchestrator

    from aideploy.azure_requests import WORKSPACE_LOCATION, asset_actions, sdk_request
    from aideploy_plugins.target_managed import ASSET_NOTES, UPLOAD_NOTE, serialized

    readable = serialized(deployment)  # before the SDK swaps local paths for registered assets' ids
    actions = asset_actions(deployment, client, UPLOAD_NOTE, ASSET_NOTES)
    # The SDK names the cluster by its ARM id before sending (upload_dependencies: batch deployments only).
    orchestrator = OperationOrchestrator(client._operation_container, client._operation_scope, client._operation_config)
    deployment.compute = orchestrator.get_asset_arm_id(deployment.compute, azureml_type=AzureMLResourceType.COMPUTE)
    actions.append({"action": "batch_deployments.begin_create_or_update", "settings": readable,
                    "request": sdk_request("batch_deployments_create_or_update", client.batch_deployments._batch_deployment,
                                           deployment._to_rest_object(location=WORKSPACE_LOCATION),
                                           endpoint_name=endpoint, deployment_name=deployment.name),
                    "note": "the SDK first checks the endpoint exists (GET) and parses the scoring script"})
    return actions


def invoke_action(cfg: Any, name: str) -> dict:
    """How a job is started on the endpoint: not a request of the plan (it needs the input's location)."""
    return {"action": "batch_endpoints.invoke", "settings": {
        "endpoint": name, "deployment": f"{cfg.deployment} (the default)",
        "input": "a folder (uri_folder) of CSV or Parquet files of the model's columns, in a datastore or at a URL",
        "output": (f"{cfg.output_file_name}: one row per input row (file, row, prediction, scores or probabilities)"
                   if str(getattr(cfg.output_action, "value", cfg.output_action)) == "append_row" else
                   "the job's summary only")},
        "note": f"az ml batch-endpoint invoke --name {name} --input <folder> --input-type uri_folder "
                "--resource-group <resource group> --workspace-name <workspace> (a POST to the endpoint's "
                "scoringUri with a Microsoft Entra token)"}


def plan_actions(cfg: Any, ctx: Any, model: Any, environment: Any, code: Any) -> list[dict]:
    """Each step, in order, with the REST request the SDK sends for it."""
    from aideploy.azure_requests import WORKSPACE_LOCATION, plan_client, sdk_request
    from aideploy_plugins.target_managed import serialized, workspace_action, workspace_read

    name = endpoint_name(ctx)
    tags, description = azure_tags.describe(cfg, model, ctx.artifacts.get("dataset"))
    client = plan_client()
    endpoints = client.batch_endpoints._batch_operation
    endpoint = build_endpoint(name, tags, description)
    deployment = build_deployment(cfg, name, model, environment, code, tags, description)
    default = build_endpoint(name, tags, description, default=cfg.deployment)
    actions: list[dict] = [
        workspace_action(cfg),
        workspace_read(client, None, {}),
        *compute_actions(cfg, ctx, client, tags, description),
        {"action": "batch_endpoints.begin_create_or_update", "settings": serialized(endpoint),
         "request": sdk_request("batch_endpoints_create_or_update", endpoints,
                                endpoint._to_rest_batch_endpoint(location=WORKSPACE_LOCATION), endpoint_name=name)},
        *deployment_actions(deployment, client, name),
        {"action": "batch_endpoints.begin_create_or_update", "settings": {"name": name, "defaults": {
            "deployment_name": cfg.deployment}},
         "request": sdk_request("batch_endpoints_create_or_update", endpoints,
                                default._to_rest_batch_endpoint(location=WORKSPACE_LOCATION), endpoint_name=name),
         "note": "the endpoint again, its default deployment set: a job that names none runs there"},
        invoke_action(cfg, name),
        *delete_actions(cfg, ctx, client, name, teardown_note(ctx, name)),
    ]
    return actions


def delete_actions(cfg: Any, ctx: Any, client: Any, name: str, when: str) -> list[dict]:
    """The endpoint's DELETE (its deployments go with it); the cluster is listed, kept (others may use it)."""
    from aideploy.azure_requests import sdk_request

    return [{"action": "batch_endpoints.begin_delete", "settings": {"name": name, "when": when},
             "request": sdk_request("batch_endpoints_delete", client.batch_endpoints._batch_operation,
                                    endpoint_name=name),
             "note": "deleting the endpoint deletes its deployments"},
            {"action": "compute", "settings": {"name": cfg.compute},
             "note": f"kept: it scales to 0 nodes and may serve other deployments; delete it with az ml compute "
                     f"delete --name {cfg.compute} --resource-group <resource group> --workspace-name <workspace>"}]


@hookimpl
def aideploy_before_stage(stage, ctx):
    """Pre-flight, before the data stage: a config a batch endpoint cannot plan fails before a model is trained."""
    if stage.name not in ("data", "delete") or ctx.cfg.target.plugin != PLUGIN_NAME:
        return
    endpoint_name(ctx)
    check_config(ctx)
    require_sdk(PLUGIN_NAME, *PLAN_SDK_MODULES)


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.target.plugin == PLUGIN_NAME else None


@hookimpl
def aideploy_plan(cfg, ctx, model, environment, code):
    """What a deployment would do, from the SDK's own entities and requests; no workspace, credential or network."""
    require_sdk(PLUGIN_NAME, *PLAN_SDK_MODULES)
    from azure.ai.ml import __version__ as sdk_version

    from aideploy.azure_requests import plan_client

    plan: dict[str, Any] = {"target": PLUGIN_NAME, "sdk": f"azure-ai-ml {sdk_version}"}
    if ctx.mode is Mode.delete:
        name = endpoint_name(ctx)
        plan.update(mode="delete", actions=[*delete_actions(cfg, ctx, plan_client(), name,
                                                            "now: mode=delete (a name that is not there is a warning)")])
    else:
        plan["actions"] = plan_actions(cfg, ctx, model, environment, code)
    plan_script.write(ctx.output_dir, plan, cfg.workspace)
    return plan


# What aideploy itself would do with a batch endpoint beyond planning it: each refuses with check_config's one line
# (the pre-flight says it first), so that a mode the target does not serve is not taken for a missing plugin.


@hookimpl
def aideploy_deploy(cfg, ctx):
    check_config(ctx)


@hookimpl
def aideploy_update(cfg, ctx):
    check_config(ctx)


@hookimpl
def aideploy_delete(cfg, ctx, name):
    check_config(ctx)


@hookimpl
def aideploy_predict(cfg, ctx):
    check_config(ctx)


@hookimpl
def aideploy_target_capabilities(cfg):
    from aideploy.targets import TargetCapabilities

    return TargetCapabilities(runs_here=False, cloud="azure", serves="batch", schemes=("plain",))
