"""``plan.sh``: a plan's requests as a bash script that sends them with ``az rest``, for someone with ``az login``.

Written beside ``plan.json`` by the Azure targets' plan hooks. ``./plan.sh --what-if`` prints every
request (``METHOD URL``, in the plan's order) and sends nothing; it needs neither ``az`` nor a
workspace. Without it the script sends each request in turn:

- the workspace comes from the environment variables the target's config names (the same ones
  aideploy reads), and the values Azure answers (the workspace's region, the default datastore's
  storage account and container) are read from the answers of the requests that give them
  (``captures``);
- a long-running PUT is followed by GETs of the resource until its ``provisioningState`` is terminal,
  a long-running DELETE until the resource answers 404 (``az rest`` shows no response headers, so the
  ``Azure-AsyncOperation`` / ``Location`` URL the SDK polls is not available to it);
- a blob PUT is sent with ``az storage blob upload --auth-mode login``;
- a request to another host than ARM (Key Vault's data plane) names its ``host`` and the token
  ``resource`` ``az rest`` must ask for;
- a request marked ``on_error: warn`` (a secret's delete, which needs a Key Vault data role) that fails
  is reported and the script goes on, as aideploy's teardown does;
- a value a request ``expect``-s in its answer (the vault uses Azure RBAC) stops the script when it
  differs;
- a secret a body carries (``fills``: the MLP token secret, the limits store's credential) is made
  or read when the script runs, never written to plan.json or the script: generated with Python's
  ``secrets``, or read from the environment variable holding a storage connection string; bodies go
  to ``az rest`` in a private temporary file, not on its command line;
- a request aideploy makes outside Azure's API (the smoke test's scoring POST) is printed, not sent.

Bodies are written as in the plan, with the known ``{placeholders}`` filled from the variables.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

SCRIPT_FILE = "plan.sh"
ARM = "https://management.azure.com"
MMS = "https://{workspaceLocation}.api.azureml.ms"
"""azureml-core's Model Management Service: the workspace region's host (``_get_mms_url``)."""

ANSWERED = ("workspaceLocation", "storageAccount", "container", "keyVaultResourceGroup", "keyVaultName",
            "endpointPrincipalId")
"""The placeholders Azure's answers fill (``captures``)."""
SECRETS = ("mlpTokenSecret", "limitsStoreCredential")
"""The placeholders plan.sh fills with a secret it makes or reads as it runs (``fills``)."""
PLACEHOLDERS = ("subscriptionId", "resourceGroupName", "workspaceName", "resourceGroup", "workspace", *ANSWERED,
                *SECRETS)
"""The placeholders plan.sh fills: the workspace's (from the environment), those Azure answers, the secrets."""

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def plan_requests(plan: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(action, request)`` for every request of a plan, in order: the actions' (``request``, or each of
    ``requests``), then those of the roll-back branch (marked ``branch: rollback``)."""
    for branch in ("actions", "rollback"):
        for action in plan.get(branch, []):
            for request in ([action["request"]] if "request" in action else []) + action.get("requests", []):
                yield {**action, "branch": branch}, request


def request_url(request: dict[str, Any]) -> str:
    """The request's full URL, placeholders left as they are."""
    if "url" in request:
        return request["url"]
    host = request.get("host") or (MMS if "service-version" in request else ARM)
    query = dict(request.get("query") or {})
    if request.get("api-version"):
        query = {"api-version": request["api-version"], **query}
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return host + request["path"] + suffix


def _shell_template(text: str) -> str:
    """``text`` for a double-quoted bash string: known placeholders become variables, nothing else expands."""
    return _heredoc(text).replace('"', '\\"')


def _heredoc(text: str) -> str:
    """``text`` for an unquoted here-document (or a double-quoted string once its quotes are escaped)."""
    escaped = text.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
    return _PLACEHOLDER.sub(lambda m: "${" + m.group(1) + "}", escaped)


def _step(index: int, action: dict[str, Any], request: dict[str, Any]) -> list[str]:
    method, url = request["method"], request_url(request)
    lines = [f"# {index}. {action['branch']}: {action['action']}", f'URL="{_shell_template(url)}"']
    if action["branch"] == "rollback":
        lines.append(f'show {method} "$URL" "not sent: the roll-back, sent by aideploy when the smoke test fails"')
        return lines
    when = str(action.get("settings", {}).get("when", ""))
    if when.startswith("never"):
        lines.append(f'show {method} "$URL" {shlex.quote("not sent: " + when)}')
        return lines
    if "file" in request:
        blob = url.split("/{container}/", 1)[1]
        lines.append(f'upload_blob "$URL" {shlex.quote(blob)} {shlex.quote(request["file"])}')
        return lines
    if "url" in request:  # outside Azure's API: aideploy's own requests to the service
        lines.append(f'show {method} "$URL" "not sent by plan.sh: aideploy makes this request itself"')
        return lines
    for name, source in request.get("fills", {}).items():
        lines.append(f"fill {name} {shlex.quote(source['generate'] if 'generate' in source else source['env'])}")
    if "body" in request:
        lines += ["BODY=$(cat <<JSON", _heredoc(json.dumps(request["body"], indent=2)), "JSON", ")"]
    else:
        lines.append('BODY=""')
    captures = " ".join(f"{name}={shlex.quote(query)}" for name, query in request.get("captures", {}).items())
    poll = request.get("long_running", {}).get("header", "")
    resource = request.get("resource") or ("$MMS_RESOURCE" if "service-version" in request else "$ARM_RESOURCE")
    send = f'send {method} "$URL" "{resource}" {shlex.quote(poll)} "$BODY" {captures}'.rstrip()
    if request.get("on_error") == "warn":  # as aideploy does: say what was left, and go on
        send += f' || echo "plan.sh: {method} $URL failed; it is left as it is" >&2'
    lines.append(send)
    for query, value in request.get("expect", {}).items():
        lines.append(f"expect {shlex.quote(query)} {shlex.quote(json.dumps(value))} "
                     f"{shlex.quote(action.get('note', 'the answer differs from what the plan needs'))}")
    return lines


HEADER = r'''#!/usr/bin/env bash
# Generated by aideploy beside plan.json: sends the plan's requests with `az rest`.
#   ./plan.sh --what-if    print every request, in order, and send nothing (no az needed)
#   ./plan.sh              send them (needs `az login`; roles: see README "Handing a plan to Azure")
set -euo pipefail
WHAT_IF=0
if [[ "${1:-}" == "--what-if" ]]; then WHAT_IF=1; fi
REFUSED=__REFUSED__
if [[ $WHAT_IF == 0 && -n "$REFUSED" ]]; then echo "plan.sh: $REFUSED" >&2; exit 2; fi
__WORKSPACE__
__ANSWERED__
ANSWER=""
ARM_RESOURCE=https://management.azure.com/
MMS_RESOURCE=https://management.core.windows.net/

show() {  # METHOD URL [why it is not sent]
  echo "$1 $2${3:+   # $3}"
}

answer_at() {  # ANSWER DOTTED.PATH[#SEGMENT]: the value there (value.0.properties.accountName); #vaults: the
  # segment after "vaults" of the resource id there
  python3 -c 'import json, sys
value = json.loads(sys.argv[1])
path, _, segment = sys.argv[2].partition("#")
for key in path.split("."):
    value = value[int(key)] if key.isdigit() else value[key]
if segment:
    parts = value.strip("/").split("/")
    value = parts[[p.lower() for p in parts].index(segment.lower()) + 1]
print(json.dumps(value) if sys.argv[3:] else value)' "$@"
}

capture() {  # ANSWER NAME=DOTTED.PATH...: set each NAME from the JSON answer
  local answer=$1 pair; shift
  for pair in "$@"; do
    printf -v "${pair%%=*}" '%s' "$(answer_at "$answer" "${pair#*=}")"
  done
}

expect() {  # DOTTED.PATH JSON-VALUE WHY: stop unless the last answer holds that value there
  if [[ $WHAT_IF == 1 ]]; then return 0; fi
  if [[ "$(answer_at "$ANSWER" "$1" json)" != "$2" ]]; then
    echo "plan.sh: $1 is not $2: $3" >&2; exit 1
  fi
}

fill() {  # NAME hex32|ENV-VAR: make a secret (32 random bytes, hex), or read a connection string's AccountKey
  if [[ $WHAT_IF == 1 ]]; then return 0; fi
  local value
  if [[ $2 == hex32 ]]; then
    value=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  else
    value=$(python3 -c 'import os, sys
parts = dict(p.split("=", 1) for p in os.environ.get(sys.argv[1], "").split(";") if "=" in p)
if not parts.get("AccountKey"):
    sys.exit("plan.sh: $" + sys.argv[1] + " holds no storage connection string with an AccountKey")
print(parts["AccountKey"])' "$2")
  fi
  printf -v "$1" '%s' "$value"
}

wait_for() {  # URL RESOURCE HEADER: poll a long-running operation's resource until it is done
  local url=$1 resource=$2 header=$3 state
  if [[ $header == Location ]]; then
    while az rest --method get --url "$url" --resource "$resource" >/dev/null 2>&1; do sleep 10; done
    return 0
  fi
  while :; do
    state=$(az rest --method get --url "$url" --resource "$resource" --query properties.provisioningState -o tsv)
    case $state in
      Succeeded) return 0 ;;
      Failed|Canceled) echo "plan.sh: $url ended $state" >&2; return 1 ;;
    esac
    sleep 10
  done
}

BODY_FILE=""
trap 'if [[ -n $BODY_FILE ]]; then rm -f "$BODY_FILE"; fi' EXIT

send() {  # METHOD URL RESOURCE POLL-HEADER BODY [NAME=DOTTED.PATH...]: the answer is left in ANSWER
  local method=$1 url=$2 resource=$3 poll=$4 body=$5; shift 5
  show "$method" "$url"
  if [[ $WHAT_IF == 1 ]]; then return 0; fi
  if [[ -n $body ]]; then
    # A body may hold a secret: in a file only this user can read, never on a command line.
    BODY_FILE=$(umask 077; mktemp)
    printf '%s' "$body" > "$BODY_FILE"
    ANSWER=$(az rest --method "$method" --url "$url" --resource "$resource" --body "@$BODY_FILE" \
      --headers Content-Type=application/json)
    rm -f "$BODY_FILE"; BODY_FILE=""
  else
    ANSWER=$(az rest --method "$method" --url "$url" --resource "$resource")
  fi
  if [[ -n $poll ]]; then wait_for "${url}" "$resource" "$poll"; fi
  if [[ $# -gt 0 ]]; then capture "$ANSWER" "$@"; fi
}

upload_blob() {  # URL BLOB FILE
  show PUT "$1"
  if [[ $WHAT_IF == 1 ]]; then return 0; fi
  az storage blob upload --auth-mode login --account-name "$storageAccount" --container-name "$container" \
    --name "$2" --file "$3" --overwrite --only-show-errors >/dev/null
}
'''


def render(plan: dict[str, Any], workspace_cfg: Any, refused: str = "") -> str:
    """The script for ``plan``; ``workspace_cfg`` is the target's ``workspace`` group (which env vars hold
    the subscription, resource group and workspace); ``refused``: why it may only be run with --what-if."""
    names = {"subscriptionId": workspace_cfg.subscription_id_env, "resourceGroupName": workspace_cfg.resource_group_env,
             "workspaceName": workspace_cfg.workspace_name_env}
    names.update(resourceGroup=names["resourceGroupName"], workspace=names["workspaceName"])
    # The default quoted: in ${X:-{y}} the first "}" would end the expansion, leaving "}" after X's value.
    workspace = "\n".join(f'{var}="${{{env}:-"{{{var}}}"}}"' for var, env in names.items())
    answered = "\n".join(f'{name}="{{{name}}}"' for name in (*ANSWERED, *SECRETS))
    script = (HEADER.replace("__REFUSED__", shlex.quote(refused)).replace("__WORKSPACE__", workspace)
              .replace("__ANSWERED__", answered))
    steps = [line for index, (action, request) in enumerate(plan_requests(plan), start=1)
             for line in _step(index, action, request)]
    return script + "\n" + "\n".join(steps) + "\n"


def write(output_dir: Path, plan: dict[str, Any], workspace_cfg: Any, refused: str = "") -> Path:
    """Write ``plan.sh`` (executable) into ``output_dir``, beside the plan.json the runner writes."""
    path = Path(output_dir) / SCRIPT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(plan, workspace_cfg, refused))
    path.chmod(0o755)
    return path
