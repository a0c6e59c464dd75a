"""Calling a scoring service: one keep-alive session, timings and sizes per request."""

from __future__ import annotations

import logging
import time
from typing import Iterable

import requests

from aideploy.artifacts import Endpoint, Request, Response, Responses
from aideploy.errors import PredictError

log = logging.getLogger("aideploy")

PROGRESS_EVERY_SECONDS = 5.0


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:500]


def post_all(endpoint: Endpoint, items: Iterable[Request], timeout: float) -> Responses:
    """POST each request in order; fail on the first error answer with the service's reason."""
    items = list(items)
    answers: list[Response] = []
    last_report = time.monotonic()
    with requests.Session() as session:
        session.headers.update(endpoint.headers())
        for index, item in enumerate(items, start=1):
            start = time.perf_counter()
            try:
                response = session.post(endpoint.scoring_uri, data=item.body, headers=item.headers or None,
                                        timeout=timeout)
            except requests.Timeout:
                raise PredictError(f"the service at {endpoint.scoring_uri} did not answer request {index} "
                                   f"within {timeout:g} s", hint="raise target.request_timeout, or check the "
                                   "service's log for a stuck worker") from None
            except requests.ConnectionError as exc:
                raise PredictError(f"cannot reach the service at {endpoint.scoring_uri}: {exc}",
                                   hint="is it still running? see the service's log in the output dir") from None
            latency_ms = (time.perf_counter() - start) * 1000.0
            if response.status_code != 200:
                raise PredictError(f"the service answered request {index} with HTTP {response.status_code}: "
                                   f"{_error_text(response)}",
                                   hint="4xx: the request was refused as malformed; 5xx: see the service's log")
            answers.append(Response(response.content, latency_ms, len(item.body)))
            if time.monotonic() - last_report > PROGRESS_EVERY_SECONDS:
                log.info("      predict: %d/%d requests", index, len(items))
                last_report = time.monotonic()
    return Responses(answers)
