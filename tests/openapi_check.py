"""Check a request body against a Swagger 2.0 (OpenAPI v2) definition, as Azure's REST specs write them.

What Azure's documents rely on and a plain JSON Schema validator does not know: ``allOf``
inheritance of properties, ``discriminator`` with ``x-ms-discriminator-value`` (the body's
``endpointComputeType: Managed`` selects ``ManagedOnlineDeployment``), ``readOnly`` properties
that a request must not carry, and ``x-nullable``. A definition that declares properties and no
``additionalProperties`` accepts no others: an undeclared key in a body is an error (ARM ignores
some, rejects others; either way the body is not what the spec describes).

``allOf`` members are references (the 2026 documents) or inline schemas (the 2019 v1 Model
Management document, whose subtypes add their properties inline).

Only what the extracted definitions use is implemented; anything else (a ``$ref`` to a
definition that was not extracted) is reported as an error rather than skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).parent / "azure_spec"
ML_SPEC = "machinelearningservices-2026-07-01.json"

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


class Spec:
    """The extracted documents of one directory, resolving ``$ref`` across them."""

    def __init__(self, directory: Path | None = SPEC_DIR, docs: dict[str, dict] | None = None,
                 operation: str = "create") -> None:
        """The documents of ``directory`` (or ``docs`` by file name); ``operation`` is what the checked
        request does (``create`` or ``update``): a property whose ``x-ms-mutability`` lacks it is refused."""
        self.docs = docs if docs is not None else {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}
        self.operation = operation

    def resolve(self, ref: str, doc: str) -> tuple[str, str, dict]:
        """``(document, name, definition)`` for ``ref`` seen from ``doc``."""
        file, _, pointer = ref.partition("#")
        file = Path(file).name if file else doc
        name = pointer.rsplit("/", 1)[-1]
        try:
            return file, name, self.docs[file]["definitions"][name]
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
            # A member is a reference (the 2026 documents) or an inline schema (the 2019 v1 document).
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

    def validate(self, instance: Any, ref: str, doc: str = ML_SPEC) -> list[str]:
        """Every way ``instance`` departs from the definition ``ref`` (``#/definitions/OnlineEndpoint``)."""
        return self.validate_schema(instance, {"$ref": ref}, doc)

    def validate_schema(self, instance: Any, schema: dict, doc: str) -> list[str]:
        """Every way ``instance`` departs from ``schema`` as ``doc`` writes it (e.g. a body parameter's array)."""
        errors: list[str] = []
        self._check(instance, schema, doc, "$", errors)
        return errors

    def body_schema(self, doc: str, template: str, method: str) -> dict | None:
        """The body parameter's schema of ``method`` on the path ``template`` (None: the operation takes no body);
        a KeyError when the document has no such operation."""
        return self.docs[doc]["paths"][template][method.lower()].get("body")

    # ------------------------------------------------------------------------- one value

    def _check(self, value: Any, schema: dict, doc: str, where: str, errors: list[str]) -> None:
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
                self._check(item, schema.get("items", {}), doc, f"{where}[{i}]", errors)
        if kind == "object":
            self._check_object(value, schema, doc, where, errors, name)

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
                      name: str | None) -> None:
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
            if key in props:
                pdoc, pschema = props[key]
                if self._read_only(pschema, pdoc):
                    errors.append(f"{where}.{key}: read-only, a request must not send it")
                    continue
                mutability = pschema.get("x-ms-mutability")
                if mutability is not None and self.operation not in mutability:
                    errors.append(f"{where}.{key}: x-ms-mutability {mutability} does not allow it on {self.operation}")
                    continue
                self._check(item, pschema, pdoc, f"{where}.{key}", errors)
            elif isinstance(additional, dict):
                self._check(item, additional, doc, f"{where}.{key}", errors)
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
