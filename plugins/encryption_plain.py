"""``encryption=none``: rows in clear -> ``{"predictions": [...], ...}``.

A table goes as named columns in pandas' split form (``{"columns": [...], "data": [[...]]}``,
missing values as null), an array as ``{"data": [[...]]}`` by position;
``predict.batch_size`` rows per request (by default as many as make ~256 KB).

The answer format is the plain protocol of :mod:`aideploy_scoring.models`. Answers from other
scoring scripts are read as far as they go: a bare list is the predictions; anything else is
kept as it came (``Scores.answers``) and the evaluation says it could not score them.
"""

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import Request, Requests, Scores
from aideploy.client import plain_body
from aideploy.errors import PredictError
from aideploy.predictions import FIELDS, read_answer

@hookimpl
def aideploy_setup_keys():
    return None  # nothing to hide, nothing to publish


@hookimpl
def aideploy_encrypt(ctx, dataset):
    X, step = dataset.X_test, max(1, int(ctx.batch_size))
    return Requests([Request(plain_body(X[i:i + step]), len(X[i:i + step])) for i in range(0, len(X), step)])


@hookimpl
def aideploy_decrypt(requests, responses):
    columns: dict[str, list] = {name: [] for name in FIELDS}
    answers = []
    for index, (request, response) in enumerate(zip(requests.items, responses.items), start=1):
        answer = read_answer(response.body)
        answers.append(answer if answer is not None else response.body.decode("utf-8", "replace"))
        if answer is None:
            continue
        for name, values in answer.items():
            if len(values) != request.n_samples:
                raise PredictError(f"answer {index} has {len(values)} {name} for {request.n_samples} samples",
                                   hint="the service must answer one entry per sample it was sent")
            columns[name].append(values)
    if any(isinstance(a, str) for a in answers):
        return Scores(answers=answers)
    fields = {}
    for name, parts in columns.items():
        if len(parts) == len(answers):  # every answer carries it
            rows = [row for part in parts for row in part]
            fields[FIELDS[name]] = np.asarray(rows, dtype=np.float64 if name != "predictions" else None)
    return Scores(**fields)
