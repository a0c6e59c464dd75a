"""A plugin for tests: corrupts the registered model file after the model stage, so the
scoring server's init() fails while the client side still has a good estimator."""

from aideploy import hookimpl

PLUGIN_NAME = "corrupter"


@hookimpl
def aideploy_after_stage(stage, ctx, result):
    if stage.name == "model":
        result.file.write_bytes(b"this is not a pickle")
