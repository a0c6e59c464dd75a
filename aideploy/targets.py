"""What a target is and can do, declared by the target plugin instead of guessed from its name.

Other plugins ask :func:`capabilities` (the ``target`` plugin's :func:`~aideploy.hookspecs.aideploy_target_capabilities`)
rather than testing ``target.plugin == "local"``: a third-party ``target=k8s`` is then neither taken for
Azure nor for this machine, and a future ``target=batch_endpoint`` says it serves files (``serves="batch"``).
A target that declares nothing gets :data:`UNDECLARED`: remote, no cloud network, plain requests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetCapabilities:
    """A target's declaration.

    Attributes:
        runs_here: the service runs on this machine (its environment is built here, ``network=vnet`` is
            made of this machine's network namespaces).
        cloud: ``"azure"`` when the service lives in Azure (``network=vnet`` then names Azure's network),
            else None.
        serves: ``"online"`` (a scoring URI answering requests) or ``"batch"`` (jobs over files).
        schemes: the ``encryption`` plugins whose requests it serves (``plain``, ``fast``, ``seal``).
        model_kinds: the model kinds it serves (None: every kind the scoring code knows).
        mlp_token_secret: how every worker and replica of one deployment gets the same MLP round-token
            secret: ``"generated"`` (the target makes one and hands it to its workers), ``"key_vault"``
            (read through the deployment's managed identity), ``"server"`` (a deployment of one server: the
            server generates it and shares it with its workers through a private file), or None (MLPs are
            refused).
        kernels: where ``encryption=fast``'s service gets its compiled kernels (:mod:`aideploy.kernels`):
            ``"environment"`` (built here with the scoring environment), ``"image"`` (in the image build)
            or ``"init"`` (in the first worker's ``init()``).
    """

    runs_here: bool
    cloud: str | None = None
    serves: str = "online"
    schemes: tuple[str, ...] = ("plain",)
    model_kinds: tuple[str, ...] | None = None
    mlp_token_secret: str | None = None
    kernels: str = "init"

    @property
    def serves_mlps(self) -> bool:
        return self.mlp_token_secret is not None


UNDECLARED = TargetCapabilities(runs_here=False)
"""What is assumed of a target plugin that does not implement ``aideploy_target_capabilities``."""


def capabilities(ctx: Any) -> TargetCapabilities:
    """The chosen target's declaration (``target.plugin``), or :data:`UNDECLARED`."""
    name = ctx.cfg.target.plugin
    if name not in ctx.plugins.serving("aideploy_target_capabilities"):
        return UNDECLARED
    caller = ctx.plugins.stage_caller("aideploy_target_capabilities", name, "target.plugin")
    return caller(cfg=ctx.cfg.target) or UNDECLARED
