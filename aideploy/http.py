"""Calling a scoring service: one keep-alive session, timings and sizes per request.

Transient failures are retried with backoff (urllib3's ``Retry`` on the session's adapter):

- connection refused or a connect timeout (a service still starting, or restarting a worker);
- HTTP 502, 503 and 504 (a gateway or the service saying "not now"; also our service's 502
  when its key store is briefly unreachable).

A 4xx is never retried: the request itself was refused and would be refused again. Nor is a
500 (a bug, not a passing state), nor a request that was sent but not answered (a read timeout, a connection dropped mid-answer):
a stuck service does not get faster, and retrying would multiply ``request_timeout``.

POST is retried, which is safe here because scoring is idempotent: a query changes no state
on the service, and asking again gives an equivalent answer (the same scores; an encrypted
answer is re-randomised, which is the point of it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

from aideploy.artifacts import Endpoint, Request, Response, Responses
from aideploy.errors import PredictError

log = logging.getLogger("aideploy")
# urllib3 logs each retry as a warning of its own ("Retrying (Retry(total=2, ...))"); a failure
# that outlasts the retries is reported once, by aideploy, with its cause and a hint.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

RETRY_STATUSES = (502, 503, 504)
RETRIES = 3
BACKOFF_SECONDS = 0.2  # sleeps 0, 0.4, 0.8 s between the attempts

_cancelled = threading.Event()


def cancel_requests(cancel: bool = True) -> None:
    """Make :class:`Client` stop before its next request (``False`` allows requests again).

    The runner cancels on Ctrl-C and SIGTERM. The signal interrupts only the main thread; with
    ``network=vnet`` the requests run on a thread inside the client's namespace, which would
    otherwise go on sending them all while teardown waits behind it.
    """
    _cancelled.set() if cancel else _cancelled.clear()


def retry_policy(retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> Retry:
    """What is retried, and how often: see the module's docstring."""
    # read=False: a read error (timeout, dropped answer) is raised as itself, never retried.
    return Retry(total=retries, connect=retries, status=retries, read=False, other=0, redirect=0,
                 backoff_factor=backoff, status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"POST"}),
                 raise_on_status=False,  # the last answer is returned, and reported with its reason
                 respect_retry_after_header=False)  # a long Retry-After must not outlast request_timeout


def session(retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> requests.Session:
    """A keep-alive session that retries transient failures (see :func:`retry_policy`)."""
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except (ValueError, AttributeError):
        return response.text[:500]


def _retried(response: requests.Response) -> str:
    history = getattr(getattr(response.raw, "retries", None), "history", ())
    return f" (after {len(history)} retries)" if history else ""


def _connection_failure(exc: requests.ConnectionError, uri: str, what: str) -> str:
    """The cause line: 'connection refused, after retries' rather than urllib3's nested repr."""
    cause = exc.args[0] if exc.args else exc
    retried = ""
    if isinstance(cause, MaxRetryError):
        retried = ", after retries"
        cause = cause.reason or cause
    if isinstance(cause, ProtocolError):  # sent, then the connection closed: never retried
        return f"the service at {uri} closed the connection before answering {what}"
    text = str(cause)
    reason = "connection refused" if "refused" in text.lower() else text[:200]
    return f"cannot reach the service at {uri} ({what}): {reason}{retried}"


def _hint(status: int, uri: str = "") -> str:
    if status in (404, 405) and not uri.rstrip("/").endswith("/score"):
        return "the URI should end in /score (azmlinfsrv answers scoring requests there)"
    if status == 401:
        return "wrong or missing key: put the service's key in the variable named by scoring_key_env"
    if status < 500:
        return "the service refused the request itself (bad input or key); it was not retried"
    if status == 502:
        return "the service could not reach what it depends on (the key store, for encrypted schemes); check it runs"
    if status in RETRY_STATUSES:
        return "the service (or a gateway) is overloaded or restarting; try again later"
    return "see the service's log in the output dir"


def _post(http: requests.Session, endpoint: Endpoint, item: Request, what: int | str, timeout: float) -> Response:
    """POST one request; a PredictionError with the service's reason for anything but a 200.
    ``what`` names it in messages: a number (request 3), or words (the key registration)."""
    label = f"request {what}" if isinstance(what, int) else what
    if _cancelled.is_set():
        raise PredictError(f"cancelled before {label}", hint="the run was interrupted")
    start = time.perf_counter()
    try:
        response = http.post(endpoint.scoring_uri, data=item.body, headers=item.headers or None, timeout=timeout)
    except requests.Timeout:
        raise PredictError(f"the service at {endpoint.scoring_uri} did not answer {label} "
                           f"within {timeout:g} s", hint="raise target.request_timeout, or check the "
                           "service's log for a stuck worker") from None
    except requests.ConnectionError as exc:
        raise PredictError(_connection_failure(exc, endpoint.scoring_uri, label),
                           hint="is it still running? see the service's log in the output dir") from None
    except requests.RequestException as exc:  # e.g. the answer cut short: ChunkedEncodingError
        raise PredictError(f"the answer to {label} from {endpoint.scoring_uri} broke off midway "
                           f"({type(exc).__name__})",
                           hint="did the service stop or crash? see its log in the output dir") from None
    latency_ms = (time.perf_counter() - start) * 1000.0
    if response.status_code != 200:
        raise PredictError(f"the service answered {label} with HTTP {response.status_code}"
                           f"{_retried(response)}: {_error_text(response)}",
                           hint=_hint(response.status_code, endpoint.scoring_uri))
    return Response(response.content, latency_ms, len(item.body))


class Client:
    """Keep-alive sessions to one endpoint, ``concurrency`` requests in flight at a time.

    Each sending thread has its own session (a ``requests.Session`` is not thread-safe), so
    ``concurrency`` connections stay open across calls. Create and use it on the clients'
    side of the network (``network.call``): threads it starts inherit that side.
    """

    def __init__(self, endpoint: Endpoint, timeout: float, concurrency: int = 1,
                 on_answer: Callable[[int], None] | None = None) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self.concurrency = max(1, int(concurrency))
        self.on_answer = on_answer  # called with each answered query's sample count, as it comes
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._pool = None
        self.sent = 0

    def _session(self) -> requests.Session:
        http = getattr(self._local, "session", None)
        if http is None:
            http = self._local.session = session()
            http.headers.update(self.endpoint.headers())
            self._sessions.append(http)
        return http

    def _one(self, job: tuple[int, Request]) -> Response:
        index, item = job
        response = _post(self._session(), self.endpoint, item, index, self.timeout)
        if self.on_answer is not None:
            self.on_answer(item.n_samples)
        return response

    def send(self, item: Request, what: str) -> Response:
        """POST one request that is not a query (``what`` names it in errors); not counted."""
        return _post(self._session(), self.endpoint, item, what, self.timeout)

    def post(self, items: list[Request]) -> Responses:
        """POST ``items``; the answers in request order. Fails on the first error answer, with the
        answers before it in :attr:`PredictError.answered`."""
        first = self.sent + 1
        self.sent += len(items)
        jobs = list(enumerate(items, start=first))
        answered: list[Response] = []
        if self.concurrency == 1 or len(items) == 1:
            try:
                for job in jobs:
                    answered.append(self._one(job))
            except PredictError as exc:
                exc.answered = answered
                raise
            return Responses(answered)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="aideploy-client")
        futures = [self._pool.submit(self._one, job) for job in jobs]
        try:
            for future in futures:
                answered.append(future.result())
            return Responses(answered)
        except PredictError as exc:
            exc.answered = answered  # later requests may have been answered too; only an unbroken run is kept
            raise
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for http in self._sessions:
            http.close()
        self._sessions.clear()
        self._local = threading.local()


def post_all(endpoint: Endpoint, items: Iterable[Request], timeout: float, concurrency: int = 1) -> Responses:
    """POST each request (``concurrency`` at a time); the answers in order, or the first error."""
    client = Client(endpoint, timeout, concurrency)
    try:
        return client.post(list(items))
    finally:
        client.close()
