"""Cut the extracts in this directory from Microsoft's REST specifications (Azure/azure-rest-api-specs).

    python tests/azure_spec/extract.py CHECKOUT

``CHECKOUT`` holds every source file below at its repository path, as it is at the commit
recorded for it, e.g. ``git -C azure-rest-api-specs show <commit>:<path> > CHECKOUT/<path>``.
The extracts are written next to this script, one per source file, under
``<api-version>/<file name>`` (``common-types/v3/<file name>`` for the shared definitions).

An extract keeps, for each api-version, the operations the plans send (``SOURCES``) and
every definition reachable from their request bodies: through ``$ref`` (into other files too;
a body parameter given by reference to the document's own ``parameters`` is kept inline), and
from a ``discriminator`` base to each definition that extends it (all of them, but where
``SUBTYPES_KEPT`` names the ones kept). A reference that names nothing in the repository is
kept as written and not followed (``UNRESOLVED``, each with why). What is kept is kept as
it is (``type``, ``format``, ``required``, ``enum``, ``x-ms-enum``, ``readOnly``,
``x-ms-mutability``, ``additionalProperties``, ``allOf``, ``discriminator``, lengths, bounds,
patterns, defaults, examples); what is left out is only prose and what no check reads:
``description`` texts, ``summary``, ``tags``, ``x-ms-examples``, ``consumes``/``produces``,
parameters given by ``$ref`` (subscription, resource group, workspace, api-version: the
placeholders of a plan; a body, or a path parameter spanning segments such as a role assignment's
``scope``, is read and kept inline) and the response bodies (a response keeps its headers, which name how
a long-running operation is polled).
"""

from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path

REPOSITORY = "Azure/azure-rest-api-specs"
ML = "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/MachineLearningServices"
KEYVAULT = "specification/keyvault/resource-manager/Microsoft.KeyVault/stable/2024-11-01"
KEYVAULT_DATA = "specification/keyvault/data-plane/Microsoft.KeyVault/stable/2025-07-01"
AUTHORIZATION = "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01"

SOURCES: dict[str, list[tuple[str, str, list[str]]]] = {
    # api-version: [(source file, commit, operationIds the plans send with that api-version)]
    "2022-02-01-preview": [(f"{ML}/preview/2022-02-01-preview/mfe.json", "e86470c0ac78891eb15e495a305807814c7deae0",
                            ["OnlineEndpoints_CreateOrUpdate", "OnlineEndpoints_Get", "OnlineEndpoints_Delete",
                             "OnlineEndpoints_ListKeys", "OnlineEndpoints_GetToken"])],
    "2023-04-01-preview": [(f"{ML}/preview/2023-04-01-preview/mfe.json", "e86470c0ac78891eb15e495a305807814c7deae0",
                            ["OnlineDeployments_CreateOrUpdate", "OnlineDeployments_Delete",
                             "EnvironmentVersions_CreateOrUpdate", "EnvironmentVersions_Delete"])],
    "2023-04-01": [(f"{ML}/stable/2023-04-01/mfe.json", "11dce4afc3ba2c2da8b8c7989fa84877c120ef4d",
                    ["CodeVersions_CreateOrUpdate", "CodeVersions_Delete"])],
    "2023-08-01-preview": [(f"{ML}/preview/2023-08-01-preview/mfe.json", "e86470c0ac78891eb15e495a305807814c7deae0",
                            ["ModelVersions_CreateOrUpdate", "ModelVersions_Delete"])],
    "2024-10-01-preview": [(f"{ML}/preview/2024-10-01-preview/mfe.json", "f96790bc8750b6a38f16b67f0b315bfb175516c2",
                            ["Datastores_List", "Datastores_ListSecrets"]),
                           (f"{ML}/preview/2024-10-01-preview/workspaceRP.json",
                            "f96790bc8750b6a38f16b67f0b315bfb175516c2", ["Workspaces_Get"])],
    # The secrets of encryption=fast on a managed endpoint: azure-mgmt-keyvault's and azure-mgmt-authorization's
    # default api-versions for what target_managed sends through ARM, and the data-plane version it pins its
    # secrets' deletes to (azure-keyvault-secrets' own default, 2026-04-01, has no file in the index).
    "2024-11-01": [(f"{KEYVAULT}/secrets.json", "315e54b7359504c9af7e9783946a6b62f4434eb0", ["Secrets_CreateOrUpdate"]),
                   (f"{KEYVAULT}/keyvault.json", "315e54b7359504c9af7e9783946a6b62f4434eb0", ["Vaults_Get"])],
    "2022-04-01": [(f"{AUTHORIZATION}/authorization-RoleAssignmentsCalls.json",
                    "007a51db374076edb902fd44eb8299eea6336335", ["RoleAssignments_Create", "RoleAssignments_Delete"])],
    "2025-07-01": [(f"{KEYVAULT_DATA}/secrets.json", "4d75903ddcdd7b7f4d93bbdfc3a22eedc333a6f1", ["DeleteSecret"])],
    # target=batch_endpoint: the endpoint, its deployment and the compute cluster, at azure-ai-ml's versions
    "2023-10-01": [(f"{ML}/stable/2023-10-01/mfe.json", "4ecc32512e8b46fb93343cfbaa2794b9bb2c302d",
                    ["BatchEndpoints_CreateOrUpdate", "BatchEndpoints_Delete"])],
    "2024-01-01-preview": [(f"{ML}/preview/2024-01-01-preview/mfe.json", "11dce4afc3ba2c2da8b8c7989fa84877c120ef4d",
                            ["BatchDeployments_CreateOrUpdate"])],
}
SOURCES["2023-08-01-preview"].append((f"{ML}/preview/2023-08-01-preview/machineLearningServices.json",
                                      "2e10c627a14862688cdb0c5a2a4ce47d18c8103f",
                                      ["Compute_CreateOrUpdate", "Compute_Get"]))
"""Where each api-version's operations the plans send are specified, and the commit the file was read at."""

COMMON_TYPES = "specification/common-types/resource-management/v3"
COMMON = {f"{COMMON_TYPES}/types.json": "05432ee0bc8a3feb5bc0f6fd21f49bb7aeaf13af",
          f"{COMMON_TYPES}/managedidentity.json": "05432ee0bc8a3feb5bc0f6fd21f49bb7aeaf13af"}
"""The shared definitions the ML files reference (``../../../../../../common-types/resource-management/v3/...``)."""

PARAMETER_FILES = {f"{AUTHORIZATION}/common-types.json": "8cfbb5f3f32f88e73d0e4735a7af45057777833a"}
"""Files read only for a parameter an operation names by ``$ref`` (the role assignment's ``scope``): they give
no extract of their own."""

SUBTYPES_KEPT = {f"{ML}/preview/2023-08-01-preview/machineLearningServices.json": {"Compute": ["AmlCompute"]}}
"""Polymorphic bases of which an extract keeps only the subtypes the plans send (by source file): Compute has ten
(AKS, Kubernetes, ComputeInstance, ...); a body naming one that is not kept is refused by the checker."""

UNRESOLVED = {(f"{ML}/preview/2023-08-01-preview/machineLearningServices.json",
               "../../../../../common-types/resource-management/v3/managedidentity.json#/definitions/ManagedServiceIdentity"):
              "ComputeResource.identity names managedidentity.json one directory too shallow "
              "(specification/machinelearningservices/common-types/..., a path the repository does not have)"}
"""References a source writes that name nothing in the repository, with why: kept as written, not followed (a body
that uses one is refused by the checker, which cannot resolve it either)."""

OPERATION_KEYS = ("operationId", "parameters", "responses", "x-ms-long-running-operation",
                  "x-ms-long-running-operation-options")


def out_path(source: str) -> Path:
    """Where the extract of ``source`` is written, relative to this directory."""
    parts = source.split("/")
    if "common-types" in parts:
        return Path("common-types", parts[-2], parts[-1])
    return Path(parts[-2], parts[-1])


def prose_free(node):
    """``node`` without ``description`` texts (a property named ``description`` is a dict and stays)."""
    if isinstance(node, dict):
        return {k: prose_free(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [prose_free(v) for v in node]
    return node


SHARED_PARAMETERS = "common-types/resource-management/"
"""Parameters named from here are the placeholders every request carries (subscription, resource group,
api-version): left out unread."""


def parameters(operation: dict, doc: str, load) -> list[tuple[dict, str]]:
    """The operation's parameters, each with the document it is written in, as a check reads them: the
    inline ones, and of those named by ``$ref``, the body and the path parameters whose value may span
    segments (``x-ms-skip-url-encoding``, a role assignment's ``scope``). The other ``$ref`` ones (the
    subscription, resource group, workspace and api-version of every request: a plan's placeholders)
    are left out."""
    found = []
    for parameter in operation.get("parameters", []):
        if "$ref" not in parameter:
            found.append((parameter, doc))
            continue
        if SHARED_PARAMETERS in parameter["$ref"]:
            continue
        file, _, pointer = parameter["$ref"].partition("#")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(doc), file)) if file else doc
        if not pointer.startswith("/parameters/"):
            raise ValueError(f"{parameter['$ref']} (in {doc}) is not a parameter")
        resolved = load(path)["parameters"][pointer.removeprefix("/parameters/")]
        if resolved.get("in") == "body" or resolved.get("x-ms-skip-url-encoding"):
            if path != doc and refs(resolved):
                raise ValueError(f"{parameter['$ref']} (in {doc}) refers on from another file")
            found.append((resolved, path))
    return found


def operation_extract(operation: dict, kept_parameters: list[dict]) -> dict:
    """What a check reads of an operation: its id, its parameters (:func:`parameters`), its responses'
    headers, how it runs."""
    kept = {k: operation[k] for k in OPERATION_KEYS if k in operation}
    kept["parameters"] = kept_parameters
    kept["responses"] = {code: {"headers": r["headers"]} if "headers" in r else {}
                         for code, r in operation.get("responses", {}).items()}
    return prose_free(kept)


def refs(node) -> list[str]:
    """Every ``$ref`` in ``node``."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def target(ref: str, doc: str) -> tuple[str, str]:
    """(repository path, definition name) that ``ref`` names, seen from the document at ``doc``."""
    file, _, pointer = ref.partition("#")
    path = posixpath.normpath(posixpath.join(posixpath.dirname(doc), file)) if file else doc
    if not pointer.startswith("/definitions/"):
        raise ValueError(f"{ref} (in {doc}) is not a definition")
    return path, pointer.removeprefix("/definitions/")


def extract(checkout: Path) -> dict[str, dict]:
    """Every extract, by repository path of its source file."""
    loaded: dict[str, dict] = {}

    def load(path: str) -> dict:
        if path not in loaded:
            loaded[path] = json.loads((checkout / path).read_text(encoding="utf-8"))
        return loaded[path]

    commits = dict(COMMON)
    kept_paths: dict[str, dict] = {}
    pending: list[tuple[str, str]] = []
    for version, sources in SOURCES.items():
        for source, commit, operation_ids in sources:
            commits[source] = commit
            doc = load(source)
            if doc["info"]["version"] != version:
                raise ValueError(f"{source} is api-version {doc['info']['version']}, not {version}")
            paths = kept_paths.setdefault(source, {})
            found = set()
            for template, item in doc["paths"].items():
                for method, operation in item.items():
                    if operation.get("operationId") in operation_ids:
                        kept = parameters(operation, source, load)
                        paths.setdefault(template, {})[method] = operation_extract(operation, [p for p, _ in kept])
                        found.add(operation["operationId"])
                        pending += [target(r, where) for p, where in kept if p.get("in") == "body" for r in refs(p)]
            if set(operation_ids) - found:
                raise ValueError(f"{source} has no {sorted(set(operation_ids) - found)}")

    reached: dict[str, set[str]] = {}
    while pending:
        path, name = pending.pop()
        if name in reached.setdefault(path, set()):
            continue
        definitions = load(path)["definitions"]
        if name not in definitions:
            raise KeyError(f"{path} has no definition {name}")
        reached[path].add(name)
        definition = definitions[name]
        pending += [target(r, path) for r in refs(definition) if (path, r) not in UNRESOLVED]
        if "discriminator" in definition:  # a body may name any subtype of a polymorphic base
            kept = SUBTYPES_KEPT.get(path, {}).get(name)
            pending += [(path, sub) for sub, d in definitions.items()
                        if f"#/definitions/{name}" in [m.get("$ref") for m in d.get("allOf", [])]
                        and (kept is None or sub in kept)]

    extracts = {}
    for path, names in reached.items():
        doc = load(path)
        extracts[path] = {"swagger": "2.0", "info": {"version": doc["info"]["version"]},
                          "x-extracted-from": {"repository": REPOSITORY, "path": path, "commit": commits[path]},
                          **({"paths": kept_paths[path]} if path in kept_paths else {}),
                          "definitions": {n: prose_free(doc["definitions"][n]) for n in sorted(names)}}
    for path, paths in kept_paths.items():  # a file whose operations take no body (Workspaces_Get)
        extracts.setdefault(path, {"swagger": "2.0", "info": {"version": load(path)["info"]["version"]},
                                   "x-extracted-from": {"repository": REPOSITORY, "path": path,
                                                        "commit": commits[path]},
                                   "paths": paths, "definitions": {}})
    return extracts


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    here = Path(__file__).parent
    for path, doc in extract(Path(argv[0])).items():
        out = here / out_path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{out.relative_to(here)}: {len(doc.get('paths', {}))} paths, {len(doc['definitions'])} definitions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
