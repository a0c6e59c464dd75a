"""A target for tests: ``target=local`` in every hook, and its predict hook counts what it sends.

Use with ``plugins=[counting_target] target.plugin=counting_local``; results.json then holds
``target_predict`` {calls, requests}: how often the engine (and a scheme's further rounds) went
through the target's ``aideploy_predict``.
"""

from aideploy import hookimpl
from aideploy_plugins import target_local
from aideploy_plugins.target_local import aideploy_deploy, aideploy_target_capabilities  # noqa: F401 - served here too

PLUGIN_NAME = "counting_local"
sent = {"calls": 0, "requests": 0}


@hookimpl
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    sent["calls"] += 1
    sent["requests"] += len(requests.items)
    return target_local.aideploy_predict(cfg=cfg, ctx=ctx, endpoint=endpoint, network=network, requests=requests)


@hookimpl
def aideploy_evaluate():
    return {"target_predict": dict(sent)}
