"""The scoring service's secrets on a managed online endpoint: in Key Vault, readable by the endpoint alone.

A service that counts its limits in a blob container needs that account's key
(``AIDEPLOY_LIMITS_STORE_CREDENTIAL``), and one serving an MLP under ``encryption=fast`` needs the
secret that seals its round tokens (``AIDEPLOY_MLP_TOKEN_SECRET``), the same in every instance. Neither
goes into a plain environment variable of the deployment (its definition is readable by anyone who may
read the workspace). Instead, for each one:

1. **the secret** is written to the vault through ARM (``Secrets_CreateOrUpdate``): the control plane,
   which a Contributor on the vault may use, whatever the vault's permission model and firewall; the
   data plane would need a Key Vault data role the deployer otherwise has no use for;
2. **a role assignment** gives the endpoint's system-assigned identity *Key Vault Secrets User* on that
   one secret (``<vault id>/secrets/<name>``), not on the vault: the service cannot read the
   workspace's other secrets. The identity exists once the endpoint does, and the deployment (whose
   ``init()`` reads the secret) is created after it: endpoint, identity's principal id, secrets, role
   assignments, deployment. The 2023-04-01-preview deployment body also has an ``identity``
   (``ManagedServiceIdentity``, from ``TrackedResource``), but azure-ai-ml never sets it and Azure ML
   gives a deployment its endpoint's identity; a user-assigned identity made beforehand would add a
   resource to create and delete and a client id to pass, for the same ordering;
3. **the deployment** names the vault and the secrets (``AIDEPLOY_KEY_VAULT_URL``,
   ``AIDEPLOY_KEY_VAULT_SECRETS``); its ``init()`` reads them with ``ManagedIdentityCredential``
   (``aideploy_scoring.secret_settings``).

The vault is the workspace's own Key Vault (``target.key_vault`` names another in the workspace's
resource group): with ``network=vnet`` the deployment reaches it through the managed network's private
endpoint. It must use Azure RBAC (``properties.enableRbacAuthorization``): with access policies a role
assignment grants nothing. Deleting the endpoint deletes the role assignments (ARM) and the secrets
(data plane, which needs *Key Vault Secrets Officer*: without it, aideploy says so and how to delete
them; Key Vault keeps a deleted secret recoverable for its retention period, during which a secret of
the same name cannot be made again).
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from inspect import signature
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote

from aideploy.errors import ConfigError
from aideploy_scoring import settings as service_settings
from aideploy_scoring.secret_settings import VAULT_SECRETS, VAULT_URL

TOKEN_SECRET = "AIDEPLOY_MLP_TOKEN_SECRET"
LIMITS_CREDENTIAL = "AIDEPLOY_LIMITS_STORE_CREDENTIAL"
SUFFIXES = {TOKEN_SECRET: "mlp-token-secret", LIMITS_CREDENTIAL: "limits-credential"}
"""Each secret setting's vault secret is ``<endpoint>-<suffix>``: one per endpoint, so every deployment of
the endpoint (blue and green) reads the same one."""
PLACEHOLDERS = {TOKEN_SECRET: "mlpTokenSecret", LIMITS_CREDENTIAL: "limitsStoreCredential"}
"""What stands for each secret's value in a plan's body (plan.sh makes or reads it as it runs)."""

ROLE_ID = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_NAME = "Key Vault Secrets User"
DATA_PLANE_API_VERSION = "2025-07-01"
"""Key Vault's data plane (the secrets' deletes): azure-keyvault-secrets' default (2026-04-01) is newer than
every spec the tests can check it against."""
VAULT_AUDIENCE = "https://vault.azure.net"
_NAMESPACE = uuid.UUID("5b6f0c52-5d0e-4f0a-9a53-6b1d3c1d2a7e")  # role assignment names: uuid5 of endpoint/secret

# Placeholders of a plan: the vault is read from the workspace's answer (workspaces.get), the principal from
# the endpoint's (online_endpoints.get).
PLAN_VAULT_RESOURCE_GROUP = "{keyVaultResourceGroup}"
PLAN_VAULT_NAME = "{keyVaultName}"
PLAN_PRINCIPAL = "{endpointPrincipalId}"


@dataclass(frozen=True)
class Vault:
    """A Key Vault by its coordinates (placeholders in a plan)."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def url(self) -> str:
        return f"https://{self.name}.vault.azure.net"

    @property
    def id(self) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.KeyVault/vaults/{self.name}")

    def secret_id(self, secret: str) -> str:
        return f"{self.id}/secrets/{secret}"

    @classmethod
    def from_id(cls, arm_id: str) -> "Vault":
        """The vault of an ARM id (``/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<n>``)."""
        parts = arm_id.strip("/").split("/")
        lower = [p.lower() for p in parts]
        try:
            return cls(parts[lower.index("subscriptions") + 1], parts[lower.index("resourcegroups") + 1],
                       parts[lower.index("vaults") + 1])
        except (ValueError, IndexError):
            raise ValueError(f"{arm_id!r} is not a Key Vault's resource id") from None


def needed(code_settings: Mapping[str, str], mlp: bool) -> list[str]:
    """The secret settings a service with ``code_settings`` needs from a secret store: the limits store's
    credential when it counts in a blob container, the token secret when it serves an MLP (``mlp``)."""
    blob_store = code_settings.get("AIDEPLOY_LIMITS_STORE", "").startswith(("http://", "https://"))
    return [name for name, wanted in ((TOKEN_SECRET, mlp), (LIMITS_CREDENTIAL, blob_store)) if wanted]


def secret_names(endpoint: str, settings_needed: list[str]) -> dict[str, str]:
    """``{setting: vault secret name}`` of endpoint ``endpoint``."""
    return {name: f"{endpoint}-{SUFFIXES[name]}" for name in settings_needed}


def deployment_settings(vault_url: str, names: Mapping[str, str]) -> dict[str, str]:
    """The deployment's environment variables that point its service at the secrets (no value of theirs)."""
    if not names:
        return {}
    return service_settings.environment({VAULT_URL: vault_url,
                                         VAULT_SECRETS: ",".join(f"{k}={v}" for k, v in names.items())})


def role_assignment_name(endpoint: str, secret: str) -> str:
    """The role assignment's name (a GUID): the same for the same endpoint and secret, so a delete finds it."""
    return str(uuid.uuid5(_NAMESPACE, f"{endpoint}/{secret}"))


def role_definition_id(subscription_id: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{ROLE_ID}"


def plan_vault(key_vault: str | None) -> Vault:
    """The vault as a plan names it: ``target.key_vault`` in the workspace's resource group, else the
    workspace's own (its coordinates read from the workspace's answer)."""
    if key_vault:
        return Vault("{subscriptionId}", "{resourceGroupName}", str(key_vault))
    return Vault("{subscriptionId}", PLAN_VAULT_RESOURCE_GROUP, PLAN_VAULT_NAME)


def vault_captures(key_vault: str | None) -> dict[str, str]:
    """What a plan reads from the workspace's answer to find its Key Vault (nothing when one is named)."""
    if key_vault:
        return {}
    return {"keyVaultResourceGroup": "properties.keyVault#resourceGroups", "keyVaultName": "properties.keyVault#vaults"}


# ----------------------------------------------------------------------------- the SDKs' requests


def _operations(kind: str) -> Any:
    """The generated operation group the deploy stage calls (its api-version is the SDK's default)."""
    from aideploy.azure_requests import _NoCredential

    if kind == "role_assignments":
        from azure.mgmt.authorization import AuthorizationManagementClient

        return AuthorizationManagementClient(_NoCredential(), "{subscriptionId}").role_assignments
    from azure.mgmt.keyvault import KeyVaultManagementClient

    return getattr(KeyVaultManagementClient(_NoCredential(), "{subscriptionId}"), kind)


def arm_request(kind: str, operation: str, body: Any = None, body_type: str | None = None,
                subscription_id: str = "{subscriptionId}", **path: str) -> dict[str, Any]:
    """``{method, path, api-version[, body]}`` from the generated builder ``build_<operation>_request`` of the
    operation group ``kind``, the body serialised as the operation serialises it."""
    operations = _operations(kind)
    # The generated module, not a _patch subclass's (azure-mgmt-keyvault patches its vaults operations).
    builder = next(getattr(sys.modules[c.__module__], f"build_{operation}_request") for c in type(operations).__mro__
                   if hasattr(sys.modules[c.__module__], f"build_{operation}_request"))
    if "subscription_id" in signature(builder).parameters:
        path["subscription_id"] = subscription_id
    api_version = operations._api_version
    json_body = operations._serialize.body(body, body_type) if body is not None else None
    http = builder(**path, api_version=api_version, **({"json": json_body} if json_body is not None else {}))
    # As azure-core's format_url joins it to the host: a scope's own leading slash ("/{scope}/providers/...")
    # does not double it.
    path, _, query_text = http.url.partition("?")
    request: dict[str, Any] = {"method": http.method, "path": "/" + unquote(path).lstrip("/"),
                               "api-version": api_version}
    query = {k: v for k, v in parse_qsl(query_text) if k != "api-version"}
    if query:
        request["query"] = query
    if json_body is not None:
        request["body"] = json_body
    return request


def vault_get(vault: Vault) -> dict[str, Any]:
    return arm_request("vaults", "get", resource_group_name=vault.resource_group, vault_name=vault.name,
                       subscription_id=vault.subscription_id)


def _secret_body(value: str) -> Any:
    """A secret's create body, as the plan shows it and the deploy sends it."""
    from azure.mgmt.keyvault.models import SecretCreateOrUpdateParameters, SecretProperties

    return SecretCreateOrUpdateParameters(properties=SecretProperties(value=value))


def _role_body(vault: Vault, principal_id: str) -> Any:
    """The endpoint identity's role assignment body (Key Vault Secrets User), as planned and as sent."""
    from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

    return RoleAssignmentCreateParameters(role_definition_id=role_definition_id(vault.subscription_id),
                                          principal_id=principal_id, principal_type="ServicePrincipal")


def secret_put(vault: Vault, secret: str, value: str) -> dict[str, Any]:
    return arm_request("secrets", "create_or_update", _secret_body(value), "SecretCreateOrUpdateParameters",
                       resource_group_name=vault.resource_group, vault_name=vault.name, secret_name=secret,
                       subscription_id=vault.subscription_id)


def role_put(vault: Vault, secret: str, endpoint: str, principal_id: str) -> dict[str, Any]:
    return arm_request("role_assignments", "create", _role_body(vault, principal_id), "RoleAssignmentCreateParameters",
                       scope=vault.secret_id(secret), role_assignment_name=role_assignment_name(endpoint, secret))


def role_delete(vault: Vault, secret: str, endpoint: str) -> dict[str, Any]:
    return arm_request("role_assignments", "delete", scope=vault.secret_id(secret),
                       role_assignment_name=role_assignment_name(endpoint, secret))


def secret_delete(vault: Vault, secret: str) -> dict[str, Any]:
    """The data plane's DELETE of a secret, as azure-keyvault-secrets builds it (at :data:`DATA_PLANE_API_VERSION`)."""
    from azure.keyvault.secrets._generated._operations._operations import build_key_vault_delete_secret_request

    http = build_key_vault_delete_secret_request(secret, api_version=DATA_PLANE_API_VERSION)
    return {"method": http.method, "host": vault.url, "path": "/" + unquote(http.url.partition("?")[0]).lstrip("/"),
            "api-version": DATA_PLANE_API_VERSION,
            "resource": VAULT_AUDIENCE}


# ----------------------------------------------------------------------------- plan actions


def fills(setting: str, keystore_cfg: Any) -> dict[str, dict[str, str]]:
    """How plan.sh gets a secret's value as it runs: a fresh token secret, or the key store account's key from
    the connection string aideploy's client reads too."""
    if setting == TOKEN_SECRET:
        return {PLACEHOLDERS[setting]: {"generate": "hex32"}}
    return {PLACEHOLDERS[setting]: {"env": str(keystore_cfg.get("connection_string_env") or
                                               "AZURE_STORAGE_CONNECTION_STRING")}}


def vault_action(vault: Vault, key_vault: str | None) -> dict[str, Any]:
    """The vault's read, as a plan action: it must use Azure RBAC (checked before anything is made)."""
    return {"action": "vaults.get", "settings": {"vault": vault.name, "from": f"target.key_vault={key_vault}"
                                                 if key_vault else "the workspace's properties.keyVault"},
            "request": {**vault_get(vault), "expect": {"properties.enableRbacAuthorization": True}},
            "note": "the vault must use Azure RBAC: with access policies the role assignments below would grant "
                    "nothing (name another vault with target.key_vault)"}


def provision_actions(vault: Vault, names: Mapping[str, str], endpoint: str, keystore_cfg: Any) -> list[dict[str, Any]]:
    """Each secret's PUT, then its role assignment's PUT, as plan actions."""
    actions = []
    for setting, secret in names.items():
        placeholder = "{" + PLACEHOLDERS[setting] + "}"
        actions.append({"action": "secrets.create_or_update", "settings": {"vault": vault.name, "name": secret,
                                                                           "holds": setting},
                        "request": {**secret_put(vault, secret, placeholder), "fills": fills(setting, keystore_cfg)},
                        "note": f"{placeholder} is made or read by plan.sh as it runs (never written here); through "
                                "ARM, which a Contributor on the vault may call (a new version if it exists)"})
    for setting, secret in names.items():
        actions.append({"action": "role_assignments.create", "settings": {
            "role": ROLE_NAME, "scope": f"the secret {secret} only", "principal": "the endpoint's system-assigned "
            "identity"}, "request": role_put(vault, secret, endpoint, PLAN_PRINCIPAL),
            "note": "needs Owner, User Access Administrator or Role Based Access Control Administrator on the vault"})
    return actions


def release_actions(vault: Vault, names: Mapping[str, str], endpoint: str, when: str) -> list[dict[str, Any]]:
    """Each role assignment's DELETE (ARM), then each secret's (data plane), as plan actions."""
    actions = [{"action": "role_assignments.delete", "settings": {"scope": f"the secret {secret}", "when": when},
                "request": role_delete(vault, secret, endpoint)} for secret in names.values()]
    actions += [{"action": "SecretClient.begin_delete_secret", "settings": {"vault": vault.name, "name": secret,
                                                                            "when": when},
                 "request": {**secret_delete(vault, secret), "on_error": "warn"},
                 "note": "Key Vault's data plane: needs Key Vault Secrets Officer on the vault (without it aideploy "
                         "warns and keeps going); the vault keeps the deleted secret recoverable for its retention "
                         "period"} for secret in names.values()]
    return actions


# ----------------------------------------------------------------------------- at deploy time


def values(settings_needed: list[str], keystore_cfg: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """Each needed secret's value: a fresh token secret, the key store account's key (from its connection string)."""
    import secrets

    found = {}
    for setting in settings_needed:
        if setting == TOKEN_SECRET:
            found[setting] = secrets.token_hex(32)
            continue
        env = keystore_cfg.get("connection_string_env")
        parts = dict(p.split("=", 1) for p in (environ.get(env, "") if env else "").split(";") if "=" in p)
        if not parts.get("AccountKey"):
            raise ConfigError(f"the managed endpoint's service counts its limits in the key store's account and needs "
                              f"that account's key (kept in Key Vault), but ${env or 'keystore.connection_string_env'} "
                              "holds no connection string with an AccountKey",
                              hint="export the key store's connection string (az storage account show-connection-"
                              "string), or serve it with encryption=none")
        found[setting] = parts["AccountKey"]
    return found


def workspace_vault(client: Any, workspace: Any, key_vault: str | None) -> Vault:
    """The vault the secrets go to: ``target.key_vault`` in the workspace's resource group, else the workspace's
    own (its ``key_vault`` resource id). ``client`` is azure-ai-ml's ``MLClient``, ``workspace`` its settings."""
    if key_vault:
        return Vault(workspace.subscription_id, workspace.resource_group, str(key_vault))
    return Vault.from_id(client.workspaces.get(workspace.workspace_name).key_vault)


def check_vault(credential: Any, vault: Vault) -> None:
    """The vault uses Azure RBAC, or a :class:`ConfigError`: with access policies a role assignment grants nothing."""
    from azure.mgmt.keyvault import KeyVaultManagementClient

    found = KeyVaultManagementClient(credential, vault.subscription_id).vaults.get(vault.resource_group, vault.name)
    if not found.properties.enable_rbac_authorization:
        raise ConfigError(f"the Key Vault {vault.name} uses access policies, not Azure RBAC: the role assignment "
                          "that lets the endpoint read its secrets would grant nothing",
                          hint="name a vault that uses Azure RBAC in the workspace's resource group with "
                          "target.key_vault=<name> (switching the workspace's own vault to RBAC would cut off "
                          "everything its access policies allow)")


def create(credential: Any, vault: Vault, endpoint: str, setting: str, secret: str, value: str,
           principal_id: str) -> None:
    """The secret (ARM), then the endpoint identity's role on it."""
    from azure.mgmt.authorization import AuthorizationManagementClient
    from azure.mgmt.keyvault import KeyVaultManagementClient

    KeyVaultManagementClient(credential, vault.subscription_id).secrets.create_or_update(
        vault.resource_group, vault.name, secret, _secret_body(value))
    AuthorizationManagementClient(credential, vault.subscription_id).role_assignments.create(
        vault.secret_id(secret), role_assignment_name(endpoint, secret), _role_body(vault, principal_id))


def delete(credential: Any, vault: Vault, endpoint: str, secret: str) -> None:
    """The role assignment (ARM), then the secret (data plane); a RuntimeError saying how to delete what was left."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.keyvault.secrets import SecretClient
    from azure.mgmt.authorization import AuthorizationManagementClient

    AuthorizationManagementClient(credential, vault.subscription_id).role_assignments.delete(
        vault.secret_id(secret), role_assignment_name(endpoint, secret))
    try:
        with SecretClient(vault.url, credential, api_version=DATA_PLANE_API_VERSION) as client:
            client.begin_delete_secret(secret)
    except ResourceNotFoundError:
        return
    except HttpResponseError as exc:
        raise RuntimeError(f"the secret {secret} stays in Key Vault {vault.name} ({exc.status_code or exc.reason}: "
                           f"deleting it needs Key Vault Secrets Officer); delete it with `az keyvault secret delete "
                           f"--vault-name {vault.name} --name {secret}`") from None
