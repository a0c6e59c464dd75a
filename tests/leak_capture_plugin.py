"""A plugin for tests: hands the run's secrets to the test (in a file outside the run's
outputs), so the test can search every output of the run for them: the client's secret key
(either scheme) and the SAS URL the service is given for the public keys."""

import base64
import json
import os

from aideploy import hookimpl

PLUGIN_NAME = "leak_capture"


def _secret_key(client) -> bytes:
    if hasattr(client, "secret_key"):  # encrypted-inference: base64 of the key
        return base64.b64decode(client.secret_key())
    return client.crypto._s_ntt.tobytes()  # fast: the FastClient's secret key, in NTT form, as it keeps it


@hookimpl
def aideploy_after_stage(stage, result):
    if stage.name == "keys" and result is not None:
        with open(os.environ["PYTEST_AIDEPLOY_CAPTURE_FILE"], "w") as fh:
            json.dump({"secret_key": base64.b64encode(_secret_key(result.client)).decode(),
                       "key_url": result.public["key_url"]}, fh)
