"""Check a request against the Swagger 2.0 (OpenAPI v2) documents Azure's REST specs are written in.

A request (``{method, path, api-version[, query][, body]}``, as plans carry them) is checked
against the extract of the api-version it carries (``tests/azure_spec/``, see its README): its
operation must be in that extract (path template and method), its path and query parameters
must be the operation's, and its body must be what the body parameter's schema describes. A
request whose api-version has no extract is an error, not a pass.

What Azure's documents rely on and a plain JSON Schema validator does not know: ``allOf``
inheritance of properties, ``discriminator`` with ``x-ms-discriminator-value`` (the body's
``endpointComputeType: Managed`` selects ``ManagedOnlineDeployment``), ``readOnly`` properties
that a request must not carry (also when the ``$ref`` names a read-only definition),
``x-ms-mutability`` (a property without ``create`` is refused in a create; one without
``update`` in an update, unless it carries the value the resource was created with), enums
(compared as written; ``x-ms-enum.modelAsString`` lets other values through), ``x-nullable``,
formats, bounds and lengths. A definition that declares properties and no
``additionalProperties`` accepts no others: an undeclared key in a body is an error.

A path parameter marked ``x-ms-skip-url-encoding`` (a role assignment's ``scope``) may span segments.
``$ref`` are resolved as the documents write them, relative to each document's path in the
specification repository (``../../../../../../common-types/resource-management/v3/types.json``).
``allOf`` members are references (the ARM documents) or inline schemas (the 2019 v1 Model
Management document, whose subtypes add their properties inline). Anything the extracts lack
(a ``$ref`` to a definition that was not extracted) is reported as an error rather than skipped.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).parent / "azure_spec"

_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")
_ARM_ID = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/[^/]+/[^/]+/[^/]+(/[^/]+/[^/]+)*$",
                     re.IGNORECASE)
_FORMATS = {"duration": (_DURATION, "an ISO 8601 duration"), "uuid": (_UUID, "a uuid"),
            "date-time": (_DATE_TIME, "an RFC 3339 date-time"), "uri": (_URI, "an absolute URI"),
            "arm-id": (_ARM_ID, "an ARM resource id")}
_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}
_QUERY_VALUES = {"integer": re.compile(r"^-?\d+$"), "boolean": re.compile(r"^(true|false)$")}
_PLACEHOLDER = re.compile(r"^\{\w+\}$")
_NOTHING = object()
"""Where an update has no value the resource was created with."""


class Spec:
    """The extracted documents, by their path in the specification repository, resolving ``$ref`` across them."""

    def __init__(self, directory: Path | None = SPEC_DIR, docs: dict[str, dict] | None = None) -> None:
        """Every ``*.json`` under ``directory`` (or ``docs`` by name), each known by the repository path its
        ``x-extracted-from`` header names."""
        if docs is None:
            docs = {}
            for file in sorted(directory.rglob("*.json")):
                doc = json.loads(file.read_text(encoding="utf-8"))
                docs[doc.get("x-extracted-from", {}).get("path", file.name)] = doc
        self.docs = docs

    def key(self, file: Path) -> str:
        """The name the document in ``file`` is known by (its source's repository path)."""
        return json.loads(file.read_text(encoding="utf-8"))["x-extracted-from"]["path"]

    def resolve(self, ref: str, doc: str) -> tuple[str, str, dict]:
        """``(document, name, definition)`` for ``ref`` seen from ``doc``."""
        file, _, pointer = ref.partition("#")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(doc), file)) if file else doc
        name = pointer.rsplit("/", 1)[-1]
        try:
            return path, name, self.docs[path]["definitions"][name]
        except KeyError:
            raise KeyError(f"{ref} (from {doc}) is not in the extracted spec") from None

    def subtypes(self, doc: str, name: str) -> dict[str, tuple[str, str, dict]]:
        """Definitions of ``doc`` that extend ``name`` (through ``allOf``), by ``x-ms-discriminator-value``."""
        found = {}
        for sub, definition in self.docs[doc]["definitions"].items():
            value = definition.get("x-ms-discriminator-value")
            if value is not None and name in self._ancestors(doc, sub):
                found[value] = (doc, sub, definition)
        return found

    def _ancestors(self, doc: str, name: str) -> set[str]:
        seen: set[str] = set()
        definition = self.docs[doc]["definitions"][name]
        for parent in definition.get("allOf", []):
            if "$ref" in parent:  # an inline member names no ancestor
                pdoc, pname, _ = self.resolve(parent["$ref"], doc)
                seen |= {pname} | self._ancestors(pdoc, pname)
        return seen

    def flatten(self, doc: str, definition: dict) -> tuple[dict, set[str], str | None, bool, Any]:
        """(properties with their documents, required, discriminator, declares properties, additionalProperties)."""
        props: dict[str, tuple[str, dict]] = {}
        required: set[str] = set(definition.get("required", []))
        discriminator = definition.get("discriminator")
        declares = "properties" in definition or "allOf" in definition
        additional = definition.get("additionalProperties")
        for parent in definition.get("allOf", []):
            if "$ref" in parent:
                pdoc, _, pdef = self.resolve(parent["$ref"], doc)
            else:
                pdoc, pdef = doc, parent
            pprops, preq, pdisc, _, padd = self.flatten(pdoc, pdef)
            props.update(pprops)
            required |= preq
            discriminator = discriminator or pdisc
            additional = additional if additional is not None else padd
        props.update({k: (doc, v) for k, v in definition.get("properties", {}).items()})
        return props, required, discriminator, declares, additional

    def validate(self, instance: Any, ref: str, doc: str, operation: str = "create",
                 existing: Any = _NOTHING) -> list[str]:
        """Every way ``instance`` departs from the definition ``ref`` (``#/definitions/OnlineEndpoint``) of ``doc``."""
        return self.validate_schema(instance, {"$ref": ref}, doc, operation, existing)

    def validate_schema(self, instance: Any, schema: dict, doc: str, operation: str = "create",
                        existing: Any = _NOTHING) -> list[str]:
        """Every way ``instance`` departs from ``schema`` as ``doc`` writes it.

        ``operation`` is what the request does to the resource: ``create``, or ``update`` with the body
        it was created with as ``existing`` (a PUT of an existing resource may repeat a create-only
        value, not change it) or without one (a PATCH: a create-only property is refused outright).
        """
        errors: list[str] = []
        self._check(instance, schema, doc, "$", errors, operation, existing)
        return errors

    def body_schema(self, doc: str, template: str, method: str) -> dict | None:
        """The body parameter's schema of ``method`` on the path ``template`` (None: the operation takes no body);
        a KeyError when the document has no such operation."""
        operation = self.docs[doc]["paths"][template][method.lower()]
        if "parameters" not in operation:  # the v1 extract names the body's schema directly
            return operation.get("body")
        return next((p["schema"] for p in operation["parameters"] if p["in"] == "body"), None)

    # ------------------------------------------------------------------------- one request

    def operation(self, request: dict) -> tuple[str, str, dict, dict[str, str]]:
        """``(document, path template, operation, path values)`` of ``request`` in the extract of its api-version;
        a LookupError saying which is missing: the api-version's extract, or the operation in it."""
        version, method = request.get("api-version"), request["method"].lower()
        extracts = [key for key, doc in self.docs.items() if doc.get("info", {}).get("version") == version]
        if not extracts:
            raise LookupError(f"{request['method']} {request['path']}: no extract of api-version {version} "
                              f"in {SPEC_DIR.name}/ (extract.py cuts one from the specification)")
        for key in extracts:
            for template, item in self.docs[key].get("paths", {}).items():
                if method not in item:
                    continue
                spanning = {p["name"] for p in item[method].get("parameters", [])
                            if p["in"] == "path" and p.get("x-ms-skip-url-encoding")}
                pattern, names = _template(template, spanning)
                match = pattern.fullmatch(request["path"])
                if match:
                    return key, template, item[method], {name: match[f"p{i}"] for i, name in enumerate(names)}
        raise LookupError(f"{request['method']} {request['path']}: no such operation in the {version} extract")

    def check_request(self, request: dict, existing: Any = _NOTHING) -> list[str]:
        """Every way ``request`` departs from its operation in the spec of the api-version it carries.

        ``existing`` is the body the resource was created with when ``request`` is a PUT that updates it.
        """
        try:
            doc, _, operation, values = self.operation(request)
        except LookupError as exc:
            return [str(exc)]
        errors: list[str] = []
        parameters = operation.get("parameters", [])
        for p in (p for p in parameters if p["in"] == "path"):
            value = values[p["name"]]
            if not _PLACEHOLDER.match(value):
                errors += [f"path {p['name']}{e[1:]}" for e in self.validate_schema(value, _schema_of(p), doc)]
        declared = {p["name"]: p for p in parameters if p["in"] == "query"}
        for name, value in (request.get("query") or {}).items():
            if name not in declared:
                errors.append(f"query {name}: not a parameter of {operation['operationId']} "
                              f"(known: {sorted(declared)})")
            elif declared[name].get("type") in _QUERY_VALUES and not _QUERY_VALUES[declared[name]["type"]].match(value):
                errors.append(f"query {name}: {value!r} is not a {declared[name]['type']}")
        body = next((p for p in parameters if p["in"] == "body"), None)
        if "body" in request and body is None:
            errors.append(f"$: {operation['operationId']} takes no body")
        elif "body" in request:
            updating = request["method"] == "PUT" and existing is not _NOTHING
            errors += self.validate_schema(request["body"], body["schema"], doc,
                                           "update" if updating else "create", existing)
        elif body is not None and body.get("required"):
            errors.append(f"$: {operation['operationId']} requires a body")
        return errors

    # ------------------------------------------------------------------------- one value

    def _check(self, value: Any, schema: dict, doc: str, where: str, errors: list[str], operation: str,
               before: Any) -> None:
        name = None
        if "$ref" in schema:
            try:
                doc, name, definition = self.resolve(schema["$ref"], doc)
            except KeyError as exc:
                errors.append(f"{where}: {exc.args[0]}")
                return
            schema = {**definition, **{k: v for k, v in schema.items() if k != "$ref"}}
        if value is None:
            if not schema.get("x-nullable"):
                errors.append(f"{where}: null is not allowed")
            return
        kind = schema.get("type") or ("object" if "properties" in schema or "allOf" in schema else None)
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{where}: {value!r} is not an integer")
            elif schema.get("format") == "int32" and not -2**31 <= value < 2**31:
                errors.append(f"{where}: {value} is out of int32 range")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"{where}: {value!r} is not a number")
        elif kind in _TYPES and not isinstance(value, _TYPES[kind]):
            errors.append(f"{where}: {value!r} is not of type {kind}")
            return
        if "enum" in schema and value not in schema["enum"]:
            same_but_case = [v for v in schema["enum"] if isinstance(value, str) and str(v).lower() == value.lower()]
            extensible = schema.get("x-ms-enum", {}).get("modelAsString", False)
            if same_but_case:  # Azure compares enum values as written: 'disabled' is not 'Disabled'
                errors.append(f"{where}: {value!r} is not one of {schema['enum']} (casing: {same_but_case[0]!r})")
            elif not extensible:
                errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if kind in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_range(value, schema, where, errors)
        if kind == "array" and isinstance(value, list):
            if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
                errors.append(f"{where}: {len(value)} items, outside [{schema.get('minItems', 0)}, "
                              f"{schema.get('maxItems', 'any')}]")
        if isinstance(value, str):
            self._check_string(value, schema, where, errors)
        if kind == "array":
            for i, item in enumerate(value):
                was = before[i] if isinstance(before, list) and i < len(before) else _NOTHING
                self._check(item, schema.get("items", {}), doc, f"{where}[{i}]", errors, operation, was)
        if kind == "object":
            self._check_object(value, schema, doc, where, errors, name, operation, before)

    @staticmethod
    def _check_range(value: float, schema: dict, where: str, errors: list[str]) -> None:
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            errors.append(f"{where}: {value} is below the minimum {low}")
        if high is not None and (value > high or (schema.get("exclusiveMaximum") and value == high)):
            errors.append(f"{where}: {value} is above the maximum {high}")

    @staticmethod
    def _check_string(value: str, schema: dict, where: str, errors: list[str]) -> None:
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: {value!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: {value!r} is longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
        fmt = schema.get("format")
        if fmt in _FORMATS and not _FORMATS[fmt][0].match(value):
            errors.append(f"{where}: {value!r} is not {_FORMATS[fmt][1]}")

    def _check_object(self, value: dict, schema: dict, doc: str, where: str, errors: list[str],
                      name: str | None, operation: str, before: Any) -> None:
        props, required, discriminator, declares, additional = self.flatten(doc, schema)
        if discriminator:
            chosen = value.get(discriminator)
            base = schema.get("x-ms-discriminator-value")
            if chosen is not None and chosen != base:
                subtypes = self.subtypes(doc, name) if name else {}
                if chosen not in subtypes:
                    errors.append(f"{where}.{discriminator}: {chosen!r} names no subtype of {name} "
                                  f"(known: {sorted(subtypes)})")
                else:
                    sdoc, _, sdef = subtypes[chosen]
                    props, required, _, declares, additional = self.flatten(sdoc, sdef)
        for key in sorted(required - set(value)):
            errors.append(f"{where}: required property {key!r} is missing")
        for key, item in value.items():
            was = before.get(key, _NOTHING) if isinstance(before, dict) else _NOTHING
            if key in props:
                pdoc, pschema = props[key]
                if self._read_only(pschema, pdoc):
                    errors.append(f"{where}.{key}: read-only, a request must not send it")
                    continue
                refusal = _mutability_refusal(pschema.get("x-ms-mutability"), operation, item, was, before)
                if refusal:
                    errors.append(f"{where}.{key}: {refusal}")
                    continue
                self._check(item, pschema, pdoc, f"{where}.{key}", errors, operation, was)
            elif isinstance(additional, dict):
                self._check(item, additional, doc, f"{where}.{key}", errors, operation, was)
            elif additional is False or (declares and additional is None):
                errors.append(f"{where}.{key}: not a property the spec declares (known: {sorted(props)})")

    def _read_only(self, schema: dict, doc: str) -> bool:
        """``readOnly`` on the property, or on the definition its ``$ref`` names."""
        if schema.get("readOnly"):
            return True
        if "$ref" in schema:
            try:
                _, _, definition = self.resolve(schema["$ref"], doc)
            except KeyError:
                return False
            return bool(definition.get("readOnly"))
        return False


def _mutability_refusal(mutability: list[str] | None, operation: str, value: Any, was: Any, before: Any) -> str | None:
    """Why ``x-ms-mutability`` refuses ``value`` in ``operation`` (None: it does not)."""
    if mutability is None or operation in mutability:
        return None
    if operation == "update" and before is not _NOTHING and was == value:
        return None  # a PUT of the whole resource repeats what it was created with
    said = f"x-ms-mutability {mutability} does not allow it on {operation}"
    if operation == "update" and before is not _NOTHING:
        return f"{said} (created with {'nothing' if was is _NOTHING else repr(was)})"
    return said


def _schema_of(parameter: dict) -> dict:
    """A parameter's own schema (``type``, ``pattern``, ...), without what makes it a parameter."""
    return {k: v for k, v in parameter.items() if k not in ("in", "name", "required")}


def _template(template: str, spanning: set[str] = frozenset()) -> tuple[re.Pattern, list[str]]:
    """A path template (``.../onlineEndpoints/{endpointName}``) as a pattern, and the names of its parameters
    in the order of its groups (``p0``, ``p1``, ...: a name such as ``secret-name`` is no group name); those
    in ``spanning`` (``x-ms-skip-url-encoding``: a role assignment's ``scope`` is a whole resource id) may
    span segments."""
    parts = re.split(r"\{([\w-]+)\}", template)  # literal, name, literal, name, ..., literal
    literals, names = parts[0::2], parts[1::2]
    pattern = re.escape(literals[0]) + "".join(
        f"(?P<p{i}>{'.+' if name in spanning else '[^/]+'}){re.escape(literal)}"
        for i, (name, literal) in enumerate(zip(names, literals[1:])))
    return re.compile(pattern), names
