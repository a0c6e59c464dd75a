"""A plugin for tests: hands the run's secret key to the test (outside the run's outputs),
so the test can search every output of the run for it."""

import os

from aideploy import hookimpl

PLUGIN_NAME = "secret_capture"


@hookimpl
def aideploy_after_stage(stage, result):
    if stage.name == "keys" and result is not None:
        with open(os.environ["PYTEST_AIDEPLOY_SECRET_FILE"], "w") as fh:
            fh.write(result.client.secret_key())
