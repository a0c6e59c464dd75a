"""The stages of a run and which mode runs which.

A :class:`Stage` names its hook, the config group whose ``plugin`` serves it (None for a
hook every plugin may implement) and the name its result is kept under, which is also the
argument name later hooks receive it by.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Mode(str, Enum):
    """What a run does (``mode=...``)."""

    run = "run"  # deploy, predict, tear down
    serve = "serve"  # deploy and serve until Ctrl-C
    predict = "predict"  # predict against an existing scoring URI
    delete = "delete"  # delete a named deployment
    update = "update"  # replace a named deployment's model: new version, smoke test, switch, old one gone
    list = "list"  # show live deployments and what dead runs left behind
    gc = "gc"  # release what dead runs left behind


@dataclass(frozen=True)
class Stage:
    name: str
    hook: str
    group: str | None
    result: str | None

    def __str__(self) -> str:
        return self.name


DATA = Stage("data", "aideploy_prepare_data", "data", "dataset")
MODEL = Stage("model", "aideploy_prepare_model", "model", "model")
SCORING = Stage("scoring", "aideploy_stage_scoring", "scoring", "code")
ENVIRONMENT = Stage("environment", "aideploy_build_environment", "environment", "environment")
NETWORK = Stage("network", "aideploy_configure_network", "network", "network")
DEPLOY = Stage("deploy", "aideploy_deploy", "target", "endpoint")
KEYSTORE = Stage("keystore", "aideploy_open_keystore", "keystore", "keystore")
KEYS = Stage("keys", "aideploy_setup_keys", "encryption", "keys")
ENCRYPT = Stage("encrypt", "aideploy_encrypt", "encryption", "requests")
PREDICT = Stage("predict", "aideploy_predict", "target", "responses")
DECRYPT = Stage("decrypt", "aideploy_decrypt", "encryption", "scores")
EVALUATE = Stage("evaluate", "aideploy_evaluate", None, "metrics")
DELETE = Stage("delete", "aideploy_delete", "target", "deleted")
UPDATE = Stage("update", "aideploy_update", "target", "endpoint")
PLAN = Stage("plan", "aideploy_plan", "target", "plan")
TEARDOWN = Stage("teardown", "aideploy_teardown", None, None)

_CLIENT = [KEYS, ENCRYPT, PREDICT, DECRYPT, EVALUATE]

PIPELINES: dict[Mode, list[Stage]] = {
    Mode.run: [DATA, MODEL, SCORING, ENVIRONMENT, NETWORK, DEPLOY, *_CLIENT],
    Mode.serve: [DATA, MODEL, SCORING, ENVIRONMENT, NETWORK, DEPLOY],
    Mode.predict: [DATA, MODEL, *_CLIENT],
    Mode.delete: [DELETE],
    Mode.update: [DATA, MODEL, SCORING, ENVIRONMENT, NETWORK, UPDATE],
    Mode.list: [],  # housekeeping (aideploy.journal), no stages
    Mode.gc: [],
}
"""Stages per mode, in order. TEARDOWN always follows; KEYSTORE runs on demand inside KEYS."""

DRY_RUN: list[Stage] = [DATA, MODEL, SCORING, ENVIRONMENT, PLAN]
"""``dry_run=true``, whatever the mode: describe the deployment, create nothing."""
