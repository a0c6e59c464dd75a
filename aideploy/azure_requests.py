"""The REST requests azure-ai-ml (SDK v2) would send, built by the SDK itself, for plans.

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
from urllib.parse import unquote, urlsplit

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


def plan_client() -> Any:
    """An ``MLClient`` on the placeholder workspace: its operation groups carry the SDK's api-versions."""
    from azure.ai.ml import MLClient

    return MLClient(_NoCredential(), SCOPE["subscription_id"], SCOPE["resource_group_name"],
                    SCOPE["workspace_name"], enable_telemetry=False)


def wire_body(model: Any) -> dict[str, Any]:
    """The JSON body the generated operations send for ``model`` (read-only properties dropped)."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    return json.loads(json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True))


def sdk_request(operation: str, operations: Any, body: Any = None, **path: str) -> dict[str, Any]:
    """``{method, path, api-version[, body]}`` from the generated builder ``build_<operation>_request``.

    ``operations`` is the generated operation group the SDK calls (its ``_config`` holds the
    api-version ``MLClient`` pinned it to).
    """
    from azure.ai.ml._restclient.arm_ml_service.operations import _operations as generated

    builder = getattr(generated, f"build_{operation}_request")
    api_version = operations._config.api_version
    http = builder(**SCOPE, **path, api_version=api_version)
    url = urlsplit(http.url)
    request: dict[str, Any] = {"method": http.method, "path": unquote(url.path), "api-version": api_version}
    if body is not None:
        request["body"] = wire_body(body)
    return request


def uploaded_to(asset: Any, local_path: Path, scope: Any) -> None:
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
    asset._update_path(ArtifactStorageInfo(
        name=asset.name, version=str(asset.version),
        relative_path=f"{generate_asset_id(digest, include_directory=True)}/{local_path.name}",
        datastore_arm_id=get_datastore_arm_id(WORKSPACE_BLOB_STORE, scope),
        container_name=STORAGE_CONTAINER, storage_account_url=STORAGE_ACCOUNT_URL, is_file=local_path.is_file()))


def asset_id(scope: Any, kind: str, asset: Any) -> str:
    """The ARM id the SDK puts in the deployment once the asset is registered."""
    from azure.ai.ml._utils._arm_id_utils import get_arm_id_with_version

    return get_arm_id_with_version(scope, kind, asset.name, str(asset.version))


def asset_registrations(deployment: Any, client: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """What ``online_deployments.begin_create_or_update`` registers before the deployment itself.

    The SDK's ``upload_dependencies`` turns the local code directory, the inline environment and
    the local model into registered (anonymous) assets, in that order, and puts their ARM ids
    in the deployment. This does the same to ``deployment`` without uploading: each entry is
    ``(action, asset entity, request)``.
    """
    from azure.ai.ml.constants._common import AzureMLResourceType
    from azure.ai.ml.entities._assets import Code

    scope = client._operation_scope
    code = Code(base_path=deployment._base_path, path=deployment.code_configuration.code)
    uploaded_to(code, Path(code.path), scope)
    environment, model = deployment.environment, deployment.model
    uploaded_to(model, Path(model.path), scope)
    registrations = [
        ("code.create_or_update", code, sdk_request("code_versions_create_or_update", client._code._version_operation,
                                                    code._to_rest_object(), name=code.name, version=str(code.version))),
        ("environments.create_or_update", environment, sdk_request(
            "environment_versions_create_or_update", client.environments._version_operations,
            environment._to_rest_object(), name=environment.name, version=str(environment.version))),
        ("models.create_or_update", model, sdk_request("model_versions_create_or_update",
                                                       client.models._model_versions_operation, model._to_rest_object(),
                                                       name=model.name, version=str(model.version))),
    ]
    deployment.code_configuration.code = asset_id(scope, AzureMLResourceType.CODE, code)
    deployment.environment = asset_id(scope, AzureMLResourceType.ENVIRONMENT, environment)
    deployment.model = asset_id(scope, AzureMLResourceType.MODEL, model)
    return registrations
