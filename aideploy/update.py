"""``mode=update``: what every target shares when it replaces a deployment's model.

A target puts the new version beside the old one, then :func:`smoke_test` sends it
``update.smoke_samples`` rows of the test set as plain requests (every scheme's service answers
plain requests) and compares each answer with the model in process. Only a passed smoke test
moves traffic; a failed one leaves the old version serving and removes the new one. The
result (:class:`SmokeResult`) is the input of each target's switch-or-roll-back decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from aideploy.errors import ConfigError
from aideploy.predictions import same_labels

MAX_REASON = 300


def check_traffic_steps(steps: Any) -> list[int]:
    """``update.traffic_steps``: whole percentages, rising, each 1-100, the last 100; or a ConfigError."""
    values = list(steps or [])
    example = "update.traffic_steps=[10,50,100] (or [100] to switch at once)"
    if not values:
        raise ConfigError("update.traffic_steps is empty", hint=f"give the steps, e.g. {example}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise ConfigError(f"update.traffic_steps={values}: {value!r} is not a whole percentage from 1 to 100",
                              hint=f"use percentages of the traffic, e.g. {example}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"update.traffic_steps={values} do not rise step by step",
                          hint=f"list each step's share once, smallest first, e.g. {example}")
    if values[-1] != 100:
        raise ConfigError(f"update.traffic_steps={values} end at {values[-1]}%, so the old deployment could "
                          "never be deleted", hint=f"end the steps at 100, e.g. {example}")
    return values


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke test found: ``ok`` only when every sample was answered and agreed."""

    samples: int
    agreed: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.samples > 0 and self.agreed == self.samples and not self.reason

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "samples": self.samples, "agreed": self.agreed,
                **({"reason": self.reason} if self.reason else {})}


def agreeing(served: list[Any], expected: np.ndarray, regression: bool) -> int:
    """How many of the service's predictions equal the in-process ones (regressors: to 1e-6 relative)."""
    if len(served) != len(expected):
        return 0
    got, want = np.asarray(served), np.asarray(expected)
    if regression:
        try:
            same = np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6, atol=1e-9)
        except (TypeError, ValueError):
            return 0
    else:
        same = same_labels(got, want)
    return int(np.sum(same.reshape(len(expected), -1).all(axis=1)))


def smoke_test(scoring_uri: str, headers: Mapping[str, str], model: Any, dataset: Any, samples: int,
               timeout: float) -> SmokeResult:
    """POST ``samples`` rows of ``dataset`` one per request to ``scoring_uri`` and compare each answer
    with ``model`` in process. Never raises for what the service does: that is the result."""
    from aideploy import http
    from aideploy.client import plain_body
    from aideploy.predictions import read_answer
    from aideploy_scoring.models import REGRESSION

    chunk = next(dataset.chunks(samples), None)
    if chunk is None:
        return SmokeResult(0, 0, f"{dataset.name} has no rows to send")
    X = chunk.X_test
    expected = model.adapter.predict(X).predictions
    regression = model.task == REGRESSION
    agreed = 0
    with http.session() as s:
        for i in range(len(X)):
            body = plain_body(X[i:i + 1])
            where = f"sample {i + 1} of {len(X)}"
            try:
                answer = s.post(scoring_uri, data=body, headers={"Content-Type": "application/json", **headers},
                                timeout=timeout)
            except Exception as exc:  # connection refused, timeout, ...: the new version is not serving
                return SmokeResult(len(X), agreed, f"{where}: {type(exc).__name__}")
            if answer.status_code != 200:
                return SmokeResult(len(X), agreed, f"{where}: HTTP {answer.status_code} "
                                   f"{answer.text[:MAX_REASON].strip()}")
            served = (read_answer(answer.content) or {}).get("predictions")
            if served is None:
                return SmokeResult(len(X), agreed, f"{where}: the answer holds no predictions: "
                                   f"{answer.text[:MAX_REASON].strip()}")
            if agreeing(served, expected[i:i + 1], regression) != 1:
                return SmokeResult(len(X), agreed, f"{where}: the new version predicts {served!r}, the model in "
                                   f"process {expected[i:i + 1].tolist()!r}")
            agreed += 1
    return SmokeResult(len(X), agreed)
