"""``/swagger.json`` for aideploy's ``score.py``: the model's columns, types and an example.

azmlinfsrv builds its swagger from inference-schema's decorators on ``run()``, but a ``@rawhttp``
``run()`` (ours: binary encrypted bodies, ``GET`` descriptions) cannot carry them, and it then
serves an empty ``ServiceInput``. It also serves a swagger file it finds in the app root
(``swagger2.json``, ``swagger3.json``, ``swagger3.1.json``), so the scoring stage writes those
beside ``score.py``: the schemas inference-schema makes for ``@input_schema("input_data",
PandasParameterType(example, orient="records"))`` (or a NumpyParameterType for an array model)
and for the model's own answer to the example, in azmlinfsrv's own templates. Azure ML studio's
test page and any OpenAPI client then know what the service takes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aideploy_scoring.schema import BOOLEAN, INTEGER, NUMBER, STRING, Schema

log = logging.getLogger("aideploy")
FILES = {"2": "swagger2.json", "3": "swagger3.json", "3.1": "swagger3.1.json"}
_DTYPES = {NUMBER: "float64", INTEGER: "int64", BOOLEAN: "bool", STRING: "object"}


def example_frame(schema: Schema) -> Any:
    """The schema's example row as a one-row DataFrame with each column's dtype."""
    import pandas as pd

    row = schema.example_row()
    return pd.DataFrame({c.name: pd.Series([value], dtype=_DTYPES[c.type]) for c, value in zip(schema.columns, row)})


@contextlib.contextmanager
def _decorated(schema: Schema, answer: dict[str, Any]) -> Iterator[Any]:
    """A ``run()`` decorated as a user's score.py would be, for inference-schema to read; its entry in
    inference-schema's registry (global, by function name) is removed afterwards."""
    from inference_schema import schema_util
    from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
    from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
    from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
    from inference_schema.schema_decorators import input_schema, output_schema

    if schema.named:
        rows = PandasParameterType(example_frame(schema), orient="records", enforce_shape=False)
        name = "input_data"
    else:
        rows = NumpyParameterType(np.asarray([schema.example_row()], dtype=np.float64), enforce_shape=False)
        name = "data"

    def run(**_: Any) -> None:  # pragma: no cover - only its decorations are read
        pass

    registered = schema_util._get_function_full_qual_name(run)
    try:
        yield input_schema(name, rows)(output_schema(StandardPythonParameterType(answer))(run))
    finally:
        schema_util.__functions_schema__.pop(registered, None)
        schema_util.__versions__.pop(registered, None)


def _refine(spec: dict[str, Any], schema: Schema, version: str) -> None:
    """What inference-schema cannot say from one example: which columns may be null, and the levels
    a strict encoder takes."""
    if not schema.named:
        return
    columns = spec["properties"]["input_data"]["items"]["properties"]
    for column in schema.columns:
        prop = columns[column.name]
        if column.nullable:
            prop["x-nullable" if version == "2" else "nullable"] = True
        if column.levels is not None and column.strict:
            prop["enum"] = [v for v in column.levels if v is not None]


def documents(schema: Schema, answer: dict[str, Any], title: str) -> dict[str, dict[str, Any]]:
    """The swagger documents, by version, for a service taking ``schema`` and answering like ``answer``."""
    from inference_schema.schema_util import get_input_schema, get_output_schema, get_supported_versions

    with _decorated(schema, answer) as run:
        supported = set(get_supported_versions(run))
        inputs, outputs = get_input_schema(run), get_output_schema(run)
    out = {}
    for version, filename in FILES.items():
        if not {version, f"{version}.0"} & supported:
            continue
        template = "swagger2_template.json" if version == "2" else "swagger3_template.json"
        text = files("azureml_inference_server_http.server").joinpath(template).read_text()
        text = text.replace("$SERVICE_NAME$", title).replace("$SERVICE_VERSION$", "1.0").replace("$PATH_PREFIX$", "")
        spec = json.loads(text)
        service_input = copy.deepcopy(inputs)
        _refine(service_input, schema, version)
        where = spec["definitions"] if version == "2" else spec["components"]["schemas"]
        where["ServiceInput"], where["ServiceOutput"] = service_input, copy.deepcopy(outputs)
        if version == "3.1":
            spec["openapi"] = "3.1.0"
        out[filename] = spec
    return out


def write(source_dir: Path, model: Any) -> list[Path]:
    """Write the swagger files for ``model`` (a RegisteredModel) into the service's source directory."""
    schema = model.schema
    if schema is None:
        return []
    try:
        answer = model.adapter.predict_rows(None, [schema.example_row()]).to_json()
    except Exception as exc:  # noqa: BLE001 - a model that refuses the example: the answer's form stays unknown
        log.warning("the model refused the schema's example row (%s): /swagger.json shows no example answer", exc)
        answer = {"predictions": []}
    written = []
    for filename, spec in documents(schema, answer, f"{model.name}:{model.version}").items():
        path = Path(source_dir) / filename
        path.write_text(json.dumps(spec, indent=1, ensure_ascii=False))
        written.append(path)
    return written
