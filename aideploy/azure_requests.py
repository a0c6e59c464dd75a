"""The REST requests the Azure SDKs would send, built by the SDKs themselves, for plans.

azure-ai-ml (SDK v2, ``target=managed_endpoint``) first; azureml-core (SDK v1, ``target=aci``) in
the second half of this module.

A plan cannot send anything, so it asks the installed SDK for each request instead of
describing it: the generated operations' own request builders give the method, the path and
the api-version (the one each ``MLClient`` operation group is pinned to), and the body is the
SDK's REST model as its operations serialise it (``json.dumps(model, cls=SdkJSONEncoder,
exclude_readonly=True)``). The subscription, resource group and workspace stay placeholders:
a plan needs no workspace and shows none of its values.

Where a value only exists once Azure has answered (the workspace's region, the storage account
behind its default datastore) the body holds a ``{placeholder}`` in its place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

SCOPE = {"subscription_id": "{subscriptionId}", "resource_group_name": "{resourceGroupName}",
         "workspace_name": "{workspaceName}"}
"""Path placeholders, named as the REST specification names them."""

WORKSPACE_LOCATION = "{workspaceLocation}"
"""The SDK reads the workspace's region (``workspaces.get``) and puts it in every tracked resource."""

STORAGE_ACCOUNT_URL = "https://{storageAccount}.blob.core.windows.net"
STORAGE_CONTAINER = "{container}"


class _NoCredential:
    """An ``MLClient`` needs a credential; a plan's client never sends anything, so this one never gives a token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise RuntimeError("a plan does not sign in")

    def signed_session(self, session: Any = None) -> Any:  # msrest's credential interface (azureml-core)
        raise RuntimeError("a plan does not sign in")


def plan_client() -> Any:
    """An ``MLClient`` on the placeholder workspace: its operation groups carry the SDK's api-versions."""
    from azure.ai.ml import MLClient

    return MLClient(_NoCredential(), SCOPE["subscription_id"], SCOPE["resource_group_name"],
                    SCOPE["workspace_name"], enable_telemetry=False)


def wire_body(model: Any) -> dict[str, Any]:
    """The JSON body the generated operations send for ``model`` (read-only properties dropped)."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    return json.loads(json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True))


LONG_RUNNING = {
    "online_endpoints_create_or_update": "Azure-AsyncOperation",
    "online_deployments_create_or_update": "Azure-AsyncOperation",
    "online_endpoints_delete": "Location",
    "online_deployments_delete": "Location",
    "batch_endpoints_create_or_update": "Azure-AsyncOperation",
    "batch_deployments_create_or_update": "Azure-AsyncOperation",
    "batch_endpoints_delete": "Location",
    "compute_create_or_update": "Azure-AsyncOperation",
}
"""The long-running operations a plan sends, and the header Azure's answer names the operation's status in
(the REST spec's ``x-ms-long-running-operation`` responses, checked by tests/test_azure_requests.py)."""

TERMINAL_STATES = ("Succeeded", "Failed", "Canceled")


def polling(operation: str) -> dict[str, Any] | None:
    """How the SDK's poller (azure-mgmt-core's ARMPolling) follows a long-running operation, and how
    ``plan.sh`` does without response headers (``az rest`` prints only the body)."""
    header = LONG_RUNNING.get(operation)
    if header is None:
        return None
    deleting = header == "Location"
    return {"header": header,
            "sdk": (f"GET the {header} URL every Retry-After seconds until it answers 200 (202 while running)"
                    if deleting else f"GET the {header} URL until its status is one of {', '.join(TERMINAL_STATES)}"),
            "plan.sh": ("GET the resource until it answers 404" if deleting else
                        f"GET the resource until properties.provisioningState is one of {', '.join(TERMINAL_STATES)}")}


def sdk_request(operation: str, operations: Any, body: Any = None, **path: str) -> dict[str, Any]:
    """``{method, path, api-version[, body][, long_running]}`` from the generated builder ``build_<operation>_request``.

    ``operations`` is the generated operation group the SDK calls (its ``_config`` holds the
    api-version ``MLClient`` pinned it to). A long-running operation says how it is polled (:func:`polling`).
    """
    from azure.ai.ml._restclient.arm_ml_service.operations import _operations as generated

    builder = getattr(generated, f"build_{operation}_request")
    api_version = operations._config.api_version
    http = builder(**SCOPE, **path, api_version=api_version)
    url = urlsplit(http.url)
    request: dict[str, Any] = {"method": http.method, "path": unquote(url.path), "api-version": api_version}
    if url.query:
        request["query"] = {k: v for k, v in parse_qsl(url.query) if k != "api-version"}
        if not request["query"]:
            del request["query"]
    if body is not None:
        request["body"] = body if isinstance(body, dict) else wire_body(body)
    poll = polling(operation)
    if poll:
        request["long_running"] = poll
    return request


def datastore_requests(client: Any) -> list[tuple[str, dict[str, Any], str]]:
    """What the SDK asks before it uploads: the default datastore (its storage account and container),
    then a short-lived SAS for it (``DatastoreOperations._list_secrets``, with the body it sends)."""
    operations = client.datastores._operation
    return [
        ("datastores.get_default", {**sdk_request("datastores_list", operations, is_default=True),
                                    "captures": {"storageAccount": "value.0.properties.accountName",
                                                 "container": "value.0.properties.containerName"}},
         "the workspace's default datastore: {storageAccount} is properties.accountName, {container} "
         "properties.containerName"),
        ("datastores._list_secrets", sdk_request("datastores_list_secrets", operations,
                                                 {"expirableSecret": True, "expireAfterHours": 1},
                                                 name=WORKSPACE_BLOB_STORE),
         "a SAS for the uploads below (an identity-based datastore skips this: the credential's token is used)"),
    ]


WORKSPACE_BLOB_STORE = "workspaceblobstore"


def asset_actions(deployment: Any, client: Any, upload_note: str, asset_notes: dict[str, str]) -> list[dict[str, Any]]:
    """What a deployment's create sends before the deployment itself, as plan actions: the datastore reads
    (:func:`datastore_requests`), then for code, environment and model the blob PUTs of its upload and its
    registration (:func:`asset_registrations`, which points ``deployment`` at the registered assets)."""
    actions = [{"action": action, "request": request, "note": note} for action, request, note in
               datastore_requests(client)]
    for action, asset, request, uploads in asset_registrations(deployment, client):
        if uploads:
            actions.append({"action": f"upload for {action.split('.')[0]}", "settings": {"blobs": len(uploads)},
                            "requests": uploads, "note": upload_note})
        actions.append({"action": action, "settings": {"name": asset.name, "version": str(asset.version),
                                                       "anonymous": True},
                        "request": request, "note": asset_notes[action]})
    return actions


def blob_uploads(local_path: Path, blob_prefix: str) -> list[dict[str, Any]]:
    """The blob PUTs of the SDK's upload of ``local_path`` to ``<blob_prefix>/<its name>`` (a file, or every
    file of a directory that its ignore files keep, as ``upload_directory`` enumerates them)."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    if local_path.is_dir():
        pairs = sorted(get_upload_files_from_folder(local_path.resolve(), prefix=f"{blob_prefix}/{local_path.name}/",
                                                    ignore_file=get_ignore_file(local_path)))
    else:
        pairs = [(str(local_path), f"{blob_prefix}/{local_path.name}")]
    return [{"method": "PUT", "url": f"{STORAGE_ACCOUNT_URL}/{STORAGE_CONTAINER}/{blob}",
             "headers": {"x-ms-blob-type": "BlockBlob"}, "file": str(source)} for source, blob in pairs]


def uploaded_to(asset: Any, local_path: Path, scope: Any) -> str:
    """Point ``asset`` where the SDK's upload puts ``local_path``: ``LocalUpload/<content hash>/<name>``
    in the workspace's default datastore, as ``_check_and_upload_path`` does after uploading.

    The hash and the path are the SDK's own functions; only the storage account and container
    are placeholders (the SDK reads them from the datastore at run time).
    """
    from azure.ai.ml._artifacts._artifact_utilities import ArtifactStorageInfo
    from azure.ai.ml._utils._arm_id_utils import get_datastore_arm_id
    from azure.ai.ml._utils._asset_utils import generate_asset_id, get_ignore_file, get_object_hash
    from azure.ai.ml.entities._datastore._constants import WORKSPACE_BLOB_STORE

    digest = get_object_hash(local_path, get_ignore_file(local_path))
    prefix = generate_asset_id(digest, include_directory=True)
    asset._update_path(ArtifactStorageInfo(
        name=asset.name, version=str(asset.version),
        relative_path=f"{prefix}/{local_path.name}",
        datastore_arm_id=get_datastore_arm_id(WORKSPACE_BLOB_STORE, scope),
        container_name=STORAGE_CONTAINER, storage_account_url=STORAGE_ACCOUNT_URL, is_file=local_path.is_file()))
    return prefix


def uploaded_build_context(environment: Any) -> list[dict[str, Any]]:
    """The blob PUTs of an environment's local Docker build context, pointing its ``build.path`` where
    they land, as ``_check_and_upload_env_build_context`` does (``LocalUpload/<the SDK's content hash>/
    <directory>/``, with the trailing slash the service requires); none for an environment without one."""
    from azure.ai.ml._utils._asset_utils import generate_asset_id

    if environment.build is None or environment.path is None:
        return []
    context = Path(environment.path)
    prefix = generate_asset_id(environment._upload_hash, include_directory=True)
    environment.build.path = f"{STORAGE_ACCOUNT_URL}/{STORAGE_CONTAINER}/{prefix}/{context.name}/"
    return blob_uploads(context, prefix)


def asset_id(scope: Any, kind: str, asset: Any) -> str:
    """The ARM id the SDK puts in the deployment once the asset is registered."""
    from azure.ai.ml._utils._arm_id_utils import get_arm_id_with_version

    return get_arm_id_with_version(scope, kind, asset.name, str(asset.version))


def asset_registrations(deployment: Any, client: Any) -> list[tuple[str, Any, dict[str, Any], list[dict[str, Any]]]]:
    """What ``online_deployments.begin_create_or_update`` registers before the deployment itself.

    The SDK's ``upload_dependencies`` turns the local code directory, the inline environment and
    the local model into registered (anonymous) assets, in that order, and puts their ARM ids
    in the deployment. This does the same to ``deployment`` without uploading: each entry is
    ``(action, asset entity, request, the blob PUTs of its upload)`` (the environment uploads its
    Docker build context, when it has one).
    """
    from azure.ai.ml.constants._common import AzureMLResourceType
    from azure.ai.ml.entities._assets import Code

    scope = client._operation_scope
    code = Code(base_path=deployment._base_path, path=deployment.code_configuration.code)
    code_path = Path(code.path)
    code_uploads = blob_uploads(code_path, uploaded_to(code, code_path, scope))
    environment, model = deployment.environment, deployment.model
    context_uploads = uploaded_build_context(environment)
    model_path = Path(model.path)
    model_uploads = blob_uploads(model_path, uploaded_to(model, model_path, scope))
    registrations = [
        ("code.create_or_update", code, sdk_request("code_versions_create_or_update", client._code._version_operation,
                                                    code._to_rest_object(), name=code.name, version=str(code.version)),
         code_uploads),
        ("environments.create_or_update", environment, sdk_request(
            "environment_versions_create_or_update", client.environments._version_operations,
            environment._to_rest_object(), name=environment.name, version=str(environment.version)), context_uploads),
        ("models.create_or_update", model, sdk_request("model_versions_create_or_update",
                                                       client.models._model_versions_operation, model._to_rest_object(),
                                                       name=model.name, version=str(model.version)), model_uploads),
    ]
    deployment.code_configuration.code = asset_id(scope, AzureMLResourceType.CODE, code)
    deployment.environment = asset_id(scope, AzureMLResourceType.ENVIRONMENT, environment)
    deployment.model = asset_id(scope, AzureMLResourceType.MODEL, model)
    return registrations


# ============================================================================= azureml-core (SDK v1)
#
# azureml-core talks to the workspace's Model Management Service (MMS): model and asset
# registration through its generated msrest client (``azureml._restclient``), web services with
# ``requests`` on ``_get_mms_url(workspace) + '/services...'``. Neither sends an api-version: the
# service version is the route's ``v1.0``. The builders below give the path with placeholders,
# and the body exactly as the SDK serialises it.

V1_SCOPE = {"subscriptionId": "{subscriptionId}", "resourceGroup": "{resourceGroup}", "workspace": "{workspace}"}
"""Path placeholders of the v1 Model Management Service, named as its (2019) specification names them."""

V1_UPLOAD = "aml://artifact/LocalUpload/{container}/"
"""Where azureml-core's uploads land: ``upload_dependency`` names a fresh ``{container}`` for each file."""


def mms_version() -> dict[str, Any]:
    """The version fields of a v1 request: no api-version query, the service version in the route."""
    from azureml._model_management._constants import MMS_ROUTE_API_VERSION

    return {"api-version": None, "service-version": MMS_ROUTE_API_VERSION}


def mms_request(method: str, suffix: str, body: Any = None, query: dict[str, str] | None = None) -> dict[str, Any]:
    """A request azureml-core sends with ``requests`` to ``_get_mms_url(workspace) + suffix``.

    ``_get_mms_url`` (``azureml/_model_management/_util.py``) needs a workspace for the region's
    host; its path template is the one here, filled with placeholders instead of the workspace's ids.
    """
    from azureml._model_management._constants import MMS_ROUTE_API_VERSION

    path = ("/modelmanagement/{}/subscriptions/{}/resourceGroups/{}/providers/"
            "Microsoft.MachineLearningServices/workspaces/{}".format(MMS_ROUTE_API_VERSION, *V1_SCOPE.values()))
    request: dict[str, Any] = {"method": method, "path": path + suffix, **mms_version()}
    if query:
        request["query"] = query
    if body is not None:
        request["body"] = body
    return request


def mms_client() -> Any:
    """azureml-core's generated MMS client (``RestClient``, as ``ServiceContext`` makes it); it never signs in."""
    from azureml._restclient.rest_client import RestClient

    return RestClient(_NoCredential())


def mms_generated_request(method: str, operation: Any, body: Any, body_type: str) -> dict[str, Any]:
    """A request through the generated client: the operation's own URL template and msrest serialiser,
    which is what e.g. ``MLModelsOperations.register`` does before it sends."""
    return {"method": method, "path": operation.metadata["url"].format(**V1_SCOPE), **mms_version(),
            "body": operation.__self__._serialize.body(body, body_type)}


def v1_model_registration(model_path: Path, model_name: str, tags: dict[str, str] | None,
                          description: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two MMS requests of ``Model.register`` once its files are uploaded: the asset, then the model.

    ``Model._create_asset`` registers ``LocalUpload/<container>/<file or directory name>`` as an
    asset (``AssetsClient.create_asset``); ``Model._register_with_asset`` registers the model on
    ``aml://asset/<asset id>`` (``ModelsClient.register_model``). Both build the generated client's
    models, rebuilt here with the same classes and defaults; ``{container}`` (named at upload time)
    and ``{assetId}`` (returned by the first request) are placeholders.
    """
    from azureml._restclient.models import Asset, Model
    from azureml._restclient.models_client import DEFAULT_MIMETYPE

    client = mms_client()
    asset = Asset(name=model_name, artifacts=[{"prefix": f"LocalUpload/{{container}}/{Path(model_path).name}"}],
                  kv_tags=None, properties=None, runid=None, meta=None, type=None)
    model = Model(name=model_name, kv_tags=json.loads(json.dumps(tags)) if tags else tags, properties=None,
                  description=description, url="aml://asset/{assetId}", mime_type=DEFAULT_MIMETYPE,
                  framework=None, framework_version=None, unpack=False, experiment_name=None, run_id=None,
                  datasets=[], sample_input_data=None, sample_output_data=None, resource_requirements=None)
    return (mms_generated_request("POST", client.assets.create, asset, "Asset"),
            mms_generated_request("POST", client.ml_models.register, model, "Model"))


def v1_environment_image_request(config: Any, model_ids: list[str]) -> dict[str, Any]:
    """``InferenceConfig._build_environment_image_request`` (``azureml/core/model.py``) without its uploads.

    The SDK's template and environment serialiser, and what ``_handle_assets`` adds: the entry
    script's environment variables, the generated driver script (a temporary ``tmp*.py``, shown as
    ``{driverScript}.py``) and the source directory as a ``.tar.gz`` named by a uuid prefix
    (``{archive}.tar.gz``), each at its ``V1_UPLOAD`` location. ``config`` is not changed (the SDK
    sets the variables on the caller's environment; here a copy takes them).
    """
    import copy
    import os

    from azureml._model_management._util import environment_image_payload_template
    from azureml.core import Environment

    payload = copy.deepcopy(environment_image_payload_template)
    if model_ids:
        payload["modelIds"] = model_ids
    environment = copy.deepcopy(config.environment)
    scoring_base_name, script_location = config._get_entry_script_path()
    if environment.environment_variables is None:  # as the SDK does (setting the property logs a deprecation)
        environment.environment_variables = {}
    variables = environment.environment_variables
    if config.source_directory:
        variables["AZUREML_SOURCE_DIRECTORY"] = scoring_base_name
    variables["AZUREML_ENTRY_SCRIPT"] = os.path.join(scoring_base_name, script_location).replace(os.sep, "/")
    driver = "{driverScript}.py"
    payload["assets"].append({"id": driver, "url": V1_UPLOAD + driver, "mimeType": "application/x-python"})
    payload["driverProgram"] = driver
    if config.source_directory:
        archive = "{archive}.tar.gz"
        payload["assets"].append({"mimeType": "application/octet-stream", "id": archive, "url": V1_UPLOAD + archive,
                                  "unpack": True})
    else:
        script = os.path.basename(config.entry_script)
        payload["assets"].append({"mimeType": "application/octet-stream", "id": script, "url": V1_UPLOAD + script})
    payload["environment"] = Environment._serialize_to_dict(environment)
    return payload
