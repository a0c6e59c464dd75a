"""A plugin for tests: records every hook it sees, and can serve a failing network stage."""

from aideploy import hookimpl
from aideploy.errors import StageError

PLUGIN_NAME = "recorder"
calls: list[str] = []
released: list[str] = []


@hookimpl
def aideploy_before_stage(stage, ctx):
    calls.append(f"before:{stage.name}")
    if stage.name == "data":  # acquire something, to see that teardown releases it
        ctx.resources.add("recorder marker", lambda: released.append("marker"))


@hookimpl
def aideploy_after_stage(stage, result):
    calls.append(f"after:{stage.name}")


@hookimpl
def aideploy_on_stage_error(stage, error):
    calls.append(f"error:{stage.name}:{type(error).__name__}")


@hookimpl
def aideploy_scoring_requirements():
    calls.append("requirements")
    return ["numpy"]


@hookimpl
def aideploy_evaluate():
    calls.append("evaluate")
    return {"recorded": True}


@hookimpl
def aideploy_teardown(status):
    calls.append(f"teardown:{status}")


@hookimpl
def aideploy_run_end(results):
    calls.append(f"run_end:{results['status']}")


@hookimpl
def aideploy_configure_network(cfg):
    """Serves the network stage only when a test picks network.plugin=recorder: it fails."""
    raise StageError("recorder: this network cannot be configured", hint="it is a test")
