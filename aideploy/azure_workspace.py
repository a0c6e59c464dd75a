"""What the Azure targets share: the optional SDKs, the workspace, the credential, pre-flight checks.

The Azure SDKs are an optional extra (``pip install 'aideploy[azure]'``): nothing here imports
them at module level, so the core and the local target work without them, and choosing an
Azure target without them is one clear error naming the extra.

Which workspace comes from config as *names* (env var names, a config file path); the values
(subscription id, resource group, workspace name) are read from the environment or the file and
never written to plans, logs or results: :meth:`WorkspaceSettings.scrub` removes them from
any SDK message before it becomes an aideploy error.

One credential serves both SDKs and the network client: azure-identity's
``DefaultAzureCredential`` (a service principal in ``AZURE_TENANT_ID``/``AZURE_CLIENT_ID``/
``AZURE_CLIENT_SECRET``, workload or managed identity, ``az login``, ...). Its interactive
browser login is off, so an unattended run never waits for a person.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from aideploy.errors import AideployError, ConfigError, PluginError, StageError
from aideploy.stages import Mode

log = logging.getLogger("aideploy")

AZURE_EXTRA_INSTALL = "pip install 'aideploy[azure]'"
"""The command that installs every Azure SDK the Azure targets use."""

ARM_SCOPE = "https://management.azure.com/.default"
ACI_DELEGATION = "Microsoft.ContainerInstance/containerGroups"
"""The service a subnet must be delegated to before ACI can put a container group in it."""

SESSION_KEY = "azure_session"
"""Where the pre-flight check keeps its connected session in ``ctx.artifacts`` for the deploy stage."""

# Workspace.from_config() looks in these sub-directories first, each from the start dir upwards.
_CONFIG_DIRS = (".azureml", "aml_config", "")
_CONFIG_KEYS = ("subscription_id", "resource_group", "workspace_name")


# ----------------------------------------------------------------------------- optional SDKs


def require_sdk(target: str, *modules: str) -> None:
    """Import ``modules`` or fail with a :class:`PluginError` naming the extra to install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PluginError(
                f"target={target} needs the Azure SDK module {module!r}, which is not installed "
                f"({type(exc).__name__}: {exc})",
                hint=f"{AZURE_EXTRA_INSTALL} (azureml-core, azure-ai-ml, azure-identity, azure-mgmt-network, "
                "azure-mgmt-keyvault, azure-mgmt-authorization, azure-keyvault-secrets), "
                "or choose target=local") from None


# ----------------------------------------------------------------------------- which workspace


@dataclass(frozen=True)
class WorkspaceSettings:
    """A workspace's coordinates, with the names to show instead of the values.

    ``labels`` maps each key of :data:`_CONFIG_KEYS` to what messages show in its place: the
    env var it came from (``$AZURE_RESOURCE_GROUP``, which also works pasted into a shell) or
    ``<resource_group in /path/config.json>``.
    """

    subscription_id: str = field(repr=False)
    resource_group: str = field(repr=False)
    workspace_name: str = field(repr=False)
    source: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def label(self, key: str) -> str:
        return self.labels.get(key, f"<{key}>")

    def scrub(self, text: str) -> str:
        """``text`` with the subscription id, resource group and workspace name replaced by labels."""
        for key in _CONFIG_KEYS:
            value = getattr(self, key)
            if value:
                # Whole names only: a short resource group name must not eat parts of words.
                label = self.label(key)
                text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", lambda _: label, text,
                              flags=re.IGNORECASE)
        return text


def find_config_file(start: Path | None = None) -> Path | None:
    """The workspace config file ``Workspace.from_config()`` would use, searching from ``start``."""
    start = (start or Path.cwd()).resolve()
    for sub in _CONFIG_DIRS:
        for folder in (start, *start.parents):
            candidate = folder / sub / "config.json" if sub else folder / "config.json"
            if candidate.is_file():
                return candidate
    return None


def _read_config_file(path: Path) -> WorkspaceSettings:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the workspace config file {path}: {exc}",
                          hint="download config.json again from the workspace's page in ml.azure.com") from None
    missing = [k for k in _CONFIG_KEYS if not (isinstance(data, dict) and data.get(k))]
    if missing:
        raise ConfigError(f"the workspace config file {path} lacks {', '.join(missing)}",
                          hint="it needs subscription_id, resource_group and workspace_name (ml.azure.com > "
                          "your workspace > Download config.json), or set target.workspace.config_file")
    return WorkspaceSettings(*(str(data[k]) for k in _CONFIG_KEYS), source=f"config file {path}",
                             labels={k: f"<{k} in {path}>" for k in _CONFIG_KEYS})


def resolve_workspace(ws_cfg: Any, target: str, environ: Mapping[str, str] | None = None,
                      start: Path | None = None) -> WorkspaceSettings:
    """The workspace named by ``target.workspace``: its explicit config file, the env vars, or a found config.json.

    Needs no network. Raises :class:`ConfigError` saying what was looked for when nothing is set.
    """
    environ = os.environ if environ is None else environ
    if ws_cfg.config_file:
        path = Path(os.path.expanduser(str(ws_cfg.config_file)))
        if not path.is_file():
            raise ConfigError(f"target.workspace.config_file={path} does not exist",
                              hint="download config.json from the workspace's page in ml.azure.com, or set "
                              "target.workspace.config_file=null to use the env vars")
        return _read_config_file(path)
    names = {"subscription_id": ws_cfg.subscription_id_env, "resource_group": ws_cfg.resource_group_env,
             "workspace_name": ws_cfg.workspace_name_env}
    values = {key: environ.get(name) or "" for key, name in names.items()}
    if all(values.values()):
        return WorkspaceSettings(**values, source="env vars " + ", ".join(names.values()),
                                 labels={k: f"${name}" for k, name in names.items()})
    found = find_config_file(start)
    if found:
        return _read_config_file(found)
    unset = [names[k] for k, v in values.items() if not v]
    raise ConfigError(
        f"target={target}: no Azure ML workspace is configured: {', '.join(unset)} not set, and no "
        f"config.json in {(start or Path.cwd()).resolve()} or its parents (nor in .azureml/ or aml_config/)",
        hint=f"export {' '.join(f'{n}=...' for n in names.values())}, or save the workspace's config.json "
        "(ml.azure.com > your workspace > Download config.json) in .azureml/, or set "
        "target.workspace.config_file=<path>")


# ----------------------------------------------------------------------------- credential


def credential(target: str) -> Any:
    """The credential both SDKs use: ``DefaultAzureCredential`` without its interactive browser login."""
    from azure.identity import DefaultAzureCredential

    try:
        return DefaultAzureCredential(exclude_interactive_browser_credential=True)
    except ValueError as exc:  # e.g. a malformed AZURE_TENANT_ID, refused before any request
        raise ConfigError(f"target={target}: the Azure credential settings are invalid: {exc}",
                          hint="check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or unset them "
                          "to use `az login` or a managed identity)") from None


_UNAVAILABLE = ("unavailable", "not found", "not installed", "could not be found", "requires the")


def _attempts(message: str) -> list[str]:
    """The per-credential lines of a DefaultAzureCredential failure (or the message itself)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.startswith("\t") and ":" in ln]
    return lines or [message.strip().splitlines()[0] if message.strip() else message]


def check_credential(cred: Any, settings: WorkspaceSettings, target: str) -> None:
    """Get an Azure Resource Manager token now, so a missing or wrong credential fails before any stage.

    No credential at all is a :class:`ConfigError`; a credential that fails (bad secret, no
    network, DNS) is a :class:`StageError` carrying the SDK's own reason.
    """
    from azure.core.exceptions import AzureError

    identity_log = logging.getLogger("azure.identity")
    level = identity_log.level
    identity_log.setLevel(logging.ERROR)  # its warning would repeat the error raised below
    try:
        cred.get_token(ARM_SCOPE)
    except ValueError as exc:
        raise ConfigError(f"target={target}: the Azure credential settings are invalid: {settings.scrub(str(exc))}",
                          hint="check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET") from None
    except AzureError as exc:
        attempts = _attempts(settings.scrub(str(exc)))
        failed = [a for a in attempts if not any(word in a.lower() for word in _UNAVAILABLE)]
        ways = ("sign in with `az login`, or export AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
                "for a service principal, or run where a managed identity is assigned")
        if not failed:
            tried = ", ".join(a.split(":", 1)[0] for a in attempts)
            raise ConfigError(f"target={target}: no Azure credential is available (DefaultAzureCredential tried "
                              f"{tried}: none is set up here)", hint=ways) from None
        raise StageError(f"target={target}: Azure sign-in failed: " + "; ".join(a[:300] for a in failed[:3]),
                         hint="check the credential (" + ways + ") and that this machine reaches "
                         "login.microsoftonline.com and management.azure.com") from None
    finally:
        identity_log.setLevel(level)


@dataclass
class Session:
    """A connected workspace: where it came from, the credential and the SDK's handle on it.

    ``workspace`` is azureml-core's ``Workspace`` for ACI, azure-ai-ml's ``MLClient`` for
    managed endpoints.
    """

    settings: WorkspaceSettings
    credential: Any
    workspace: Any


def connect(ws_cfg: Any, target: str, open_workspace: Callable[[WorkspaceSettings, Any], Any]) -> Session:
    """Resolve the workspace, get a token, then ``open_workspace(settings, credential)``.

    Each failure is a clear error; the SDK's own failure to open the workspace names it.
    """
    settings = resolve_workspace(ws_cfg, target)
    cred = credential(target)
    check_credential(cred, settings, target)
    try:
        workspace = open_workspace(settings, cred)
    except Exception as exc:
        raise sdk_error(exc, f"opening the Azure ML workspace {settings.label('workspace_name')} "
                        f"(from {settings.source})", settings,
                        hint="check the subscription, resource group and workspace name, and that the "
                        "credential has access to the workspace") from None
    return Session(settings, cred, workspace)


def v1_auth(cred: Any) -> Any:
    """An azureml-core authentication object that takes its tokens from ``cred`` (azure-identity)."""
    from azureml.core.authentication import TokenAuthentication

    def token_for(audience: str) -> str:
        # azureml-core asks for a resource (an audience URL); azure-identity wants a scope.
        return cred.get_token(audience.rstrip("/") + "/.default").token

    return TokenAuthentication(token_for)


def sdk_error(exc: BaseException, doing: str, settings: WorkspaceSettings | None, error: type = StageError,
              hint: str = "", max_chars: int = 1500) -> AideployError:
    """An aideploy error for an SDK exception raised while ``doing``, scrubbed of workspace values."""
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    if settings is not None:
        text = settings.scrub(text)
    if len(text) > max_chars:
        text = text[:max_chars] + " ..."
    return error(f"{doing} failed: {type(exc).__name__}: {text}",
                 hint=hint or "see the message above; the run's log has the rest")


def delete_by_name(ctx: Any, session: Session, kind: str, name: str, delete: Callable[[], bool]) -> bool:
    """``mode=delete`` for an Azure target: run ``delete`` (True if ``name`` existed); SDK errors
    become one scrubbed message, and a name that is not there is a warning, not a failure."""
    try:
        deleted = delete()
    except Exception as exc:
        raise sdk_error(exc, f"deleting the {kind} {name!r}", session.settings) from None
    if not deleted:
        ctx.log.warning("no %s named %r in the workspace; nothing to delete", kind, name)
    return deleted


class AzureResource:
    """One Azure resource a run creates, journaled *before* it is created (``aideploy/journal.py``).

    A run killed while the SDK creates it leaves the journal entry, and ``mode=gc`` prints
    ``delete_command`` for it (Azure resources are never deleted behind the user's back). At
    teardown ``delete`` runs unless the resource was :meth:`keep`-t (``mode=serve``, a new deployment
    that took the traffic) or :meth:`disown`-ed (the create failed before it was known to be this
    run's, e.g. a name already taken); either way its journal entry then goes.
    """

    def __init__(self, ctx: Any, what: str, delete: Callable[[], Any], *, target: str, name: str,
                 delete_command: str, armed: bool = True) -> None:
        self.what, self._delete, self.armed = what, delete, armed
        ctx.resources.add(what, self._release, {"kind": "azure", "target": target, "name": name,
                                                "delete": delete_command})

    def _release(self) -> None:
        if self.armed:
            self._delete()

    def arm(self) -> None:
        """It is this run's: delete it at teardown."""
        self.armed = True

    def keep(self) -> None:
        """Not this run's to delete at teardown (its journal entry goes then)."""
        self.armed = False


def delete_command(target: str, name: str) -> str:
    """The command that deletes a whole deployment of ``target`` named ``name``."""
    return f"aideploy target={target} mode=delete deployment_name={name}"


REGISTRATIONS_DIR = "azure_registrations"


def record_registrations(home: str | Path, name: str, registrations: list[dict[str, str]]) -> None:
    """Remember the asset versions a deployment ``name`` registered in Azure (``{"kind", "name", "version"}``):
    a delete lists them (and deletes them only when asked), as Azure keeps them after the endpoint goes."""
    folder = Path(home) / REGISTRATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    known = recorded_registrations(home, name)
    path.write_text(json.dumps(known + [r for r in registrations if r not in known], indent=2))


def forget_registrations(home: str | Path, name: str, kind: str, item: str | None = None) -> None:
    """Drop what :func:`record_registrations` remembered of ``kind`` (only ``item`` of it, if given) for
    ``name``, once it is deleted."""
    path = Path(home) / REGISTRATIONS_DIR / f"{name}.json"
    if path.exists():
        kept = [r for r in recorded_registrations(home, name) if r["kind"] != kind or item not in (None, r["name"])]
        path.write_text(json.dumps(kept, indent=2))


def recorded_registrations(home: str | Path, name: str) -> list[dict[str, str]]:
    """What :func:`record_registrations` remembered for ``name`` (empty when this home made none)."""
    try:
        return json.loads((Path(home) / REGISTRATIONS_DIR / f"{name}.json").read_text())
    except (OSError, ValueError):
        return []


def teardown_note(ctx: Any, name: str) -> str:
    """When a plan's delete action runs: at teardown, or never for ``mode=serve``."""
    if ctx.mode is Mode.serve:
        return f"never: mode=serve keeps it (mode=delete deployment_name={name})"
    return "at teardown"


# ----------------------------------------------------------------------------- pre-flight


def preflight_due(stage: Any, ctx: Any, plugin_name: str) -> bool:
    """True just before the first stage (data) of a run that deploys with ``plugin_name``.

    That is the earliest point a plugin sees the run, so a missing SDK, workspace or credential
    fails before the model is trained. ``mode=predict`` needs no Azure access (only the scoring
    URI and key) and ``mode=delete`` has no data stage (its hook checks for itself).
    """
    due = (stage.name == "data" and ctx.cfg.target.plugin == plugin_name
           and (ctx.cfg.dry_run or ctx.mode in (Mode.run, Mode.serve)))
    if due and ctx.mode is Mode.run and ctx.cfg.encryption.plugin != "plain" and ctx.cfg.keystore.plugin == "azurite":
        # The service in Azure fetches the client's public keys itself: it cannot reach an
        # emulator on this machine.
        raise ConfigError(f"target={plugin_name} with encrypted queries needs a key store Azure can reach, "
                          "not keystore=azurite on this machine",
                          hint="use keystore=azure_blob (a storage account, e.g. the workspace's)")
    return due


def deployment_name(ctx: Any, pattern: str, rule: str) -> str:
    """``deployment_name`` or ``aideploy-<run id>``, checked against the service's naming rule."""
    name = ctx.cfg.deployment_name or f"aideploy-{ctx.run_id}"
    if not re.fullmatch(pattern, name):
        raise ConfigError(f"deployment_name={name!r} is not a valid name for target={ctx.cfg.target.plugin}",
                          hint=rule)
    return name


# ----------------------------------------------------------------------------- subnet (seed 004)


def subnet_fix_commands(resource_group: str, vnet_name: str, subnet_name: str, address_range: str) -> dict[str, str]:
    """The az CLI commands that create a delegated subnet, or delegate an existing one."""
    common = f"-g {resource_group} --vnet-name {vnet_name} -n {subnet_name}"
    return {
        "create": f"az network vnet subnet create {common} --address-prefixes {address_range} "
                  f"--delegations {ACI_DELEGATION}",
        "delegate": f"az network vnet subnet update {common} --delegations {ACI_DELEGATION}",
    }


def check_subnet_delegation(subnet: Any, *, resource_group: str, vnet_name: str, subnet_name: str,
                            address_range: str = "10.0.1.0/24") -> None:
    """Fail unless ``subnet`` (an ``azure.mgmt.network.models.Subnet``, or None when not found) is delegated to ACI.

    ``resource_group`` is what the fix command shows (a label such as ``$AZURE_RESOURCE_GROUP``
    when the real name must not be printed).
    """
    fix = subnet_fix_commands(resource_group, vnet_name, subnet_name, address_range)
    if subnet is None:
        raise ConfigError(
            f"network=vnet: subnet {subnet_name!r} of virtual network {vnet_name!r} does not exist",
            hint=f"create it delegated to ACI: {fix['create']} (create the VNET first if it is missing: "
            f"az network vnet create -g {resource_group} -n {vnet_name} --location <region> "
            f"--address-prefixes 10.0.0.0/16), or fix network.vnet_name / network.subnet_name")
    services = [d.service_name for d in (subnet.delegations or []) if d.service_name]
    if ACI_DELEGATION not in services:
        now = ", ".join(services) or "nothing"
        raise ConfigError(
            f"network=vnet: subnet {subnet_name!r} of virtual network {vnet_name!r} is not delegated to "
            f"{ACI_DELEGATION} (delegated to: {now}); ACI cannot deploy into it",
            hint=f"delegate it: {fix['delegate']} (a subnet has one delegation: use another subnet if this one "
            "serves something else), or skip this check with target.check_subnet=false")


def fetch_subnet(cred: Any, settings: WorkspaceSettings, resource_group: str, vnet_name: str,
                 subnet_name: str) -> Any:
    """The subnet from Azure (azure-mgmt-network), or None when it (or its VNET) does not exist."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.network import NetworkManagementClient

    client = NetworkManagementClient(cred, settings.subscription_id)
    try:
        return client.subnets.get(resource_group, vnet_name, subnet_name)
    except ResourceNotFoundError:
        return None
