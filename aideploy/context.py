"""The state of one run, passed to every hook as ``ctx``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from omegaconf import DictConfig

from aideploy.resources import Resources
from aideploy.stages import Mode

if TYPE_CHECKING:
    from aideploy.manager import PluginRegistry


@dataclass
class RunContext:
    """One run's config, plugins, outputs, acquired resources and stage results.

    Attributes:
        cfg: the composed, validated root config.
        plugins: the run's :class:`~aideploy.manager.PluginRegistry`.
        run_id: unique per run; use it in every name a run creates (deployment, blob,
            namespace) so concurrent runs never collide.
        output_dir: the Hydra output dir; results.json and logs go here.
        choices: the chosen option of each config group, e.g. ``{"target": "local"}``.
        resources: register everything acquired here for teardown.
        artifacts: stage results by name (``dataset``, ``model``, ``endpoint``, ...).
        batch_size: rows per request, set by the client before the first chunk is encrypted
            (``predict.batch_size``, or sized by :func:`aideploy.client.rows_per_request`).
        on_answer: called with each answered query's row count, as answers come (progress).
        not_applied: a sweep job's settings that its options do not use (``encryption.x_bound=2``
            beside ``encryption=none``), recorded in results.json.
    """

    cfg: DictConfig
    plugins: PluginRegistry
    run_id: str
    output_dir: Path
    choices: dict[str, str]
    resources: Resources = field(default_factory=Resources)
    artifacts: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("aideploy"))
    progress: tuple[int, int] = (0, 0)
    batch_size: int = 1
    on_answer: Callable[[int], None] | None = None
    not_applied: list[str] = field(default_factory=list)
    _open_keystore: Callable[[], Any] | None = None
    _send: Callable[[Any], Any] | None = None
    _clients: dict[Any, Any] = field(default_factory=dict)

    @property
    def mode(self) -> Mode:
        return Mode(self.cfg.mode)

    def http_client(self, endpoint: Any, timeout: float) -> Any:
        """The run's :class:`aideploy.http.Client` for ``endpoint`` (made once, closed at teardown):
        keep-alive connections, ``predict.concurrency`` requests in flight."""
        from aideploy import http

        key = ("http_client", endpoint.scoring_uri)
        if key not in self._clients:
            client = self._clients[key] = http.Client(endpoint, timeout, int(self.cfg.predict.concurrency),
                                                      on_answer=lambda n: self.on_answer and self.on_answer(n))
            self.resources.add(f"HTTP connections to {endpoint.scoring_uri}", client.close)
        return self._clients[key]

    def send(self, requests: Any) -> Any:
        """Send :class:`~aideploy.artifacts.Requests` through the target's ``aideploy_predict`` hook, as
        the engine sends each chunk's, and return its :class:`~aideploy.artifacts.Responses`: for a
        scheme whose answers need further requests (the fast MLP's rounds)."""
        assert self._send is not None, "send is only available during a run"
        return self._send(requests)

    def open_keystore(self) -> Any:
        """Start or connect to the configured key store (once per run) and return it."""
        if "keystore" not in self.artifacts:
            assert self._open_keystore is not None, "open_keystore is only available during a run"
            self._open_keystore()
        return self.artifacts["keystore"]
