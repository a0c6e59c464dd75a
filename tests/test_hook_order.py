"""The exact order in which hooks fire, for a full run and for a failing one."""

from __future__ import annotations

import pytest

import recording_plugin
from aideploy import api
from aideploy.errors import StageError

STREAMED = ["encrypt", "predict", "decrypt"]
STAGES = ["data", "model", "scoring", "environment", "network", "deploy", "keys", "encrypt", "predict", "decrypt", "evaluate"]


@pytest.fixture(autouse=True)
def fresh_recorder():
    recording_plugin.calls.clear()
    recording_plugin.released.clear()


def around(stage: str, *inside: str) -> list[str]:
    return [f"before:{stage}", *inside, f"after:{stage}"]


def test_full_run_hook_order(tmp_path):
    results = api.run([f"home={tmp_path / 'home'}", "plugins=[recording_plugin]", "data.limit=20"], tmp_path / "out")
    expected = []
    for stage in STAGES:
        if stage == "environment":
            expected.append("requirements")
        if stage not in STREAMED:
            expected += around(stage, *(["evaluate"] if stage == "evaluate" else []))
        elif stage == "encrypt":  # the three start with the first chunk, end after the last
            expected += [f"before:{s}" for s in STREAMED] + [f"after:{s}" for s in STREAMED]
    expected += around("teardown", "teardown:ok") + ["run_end:ok"]
    assert recording_plugin.calls == expected
    assert recording_plugin.released == ["marker"]
    assert results["status"] == "ok" and results["recorded"] is True
    assert set(results["stage_seconds"]) == set(STAGES) | {"teardown"}


def test_failing_run_still_tears_down(tmp_path):
    with pytest.raises(StageError):
        api.run([f"home={tmp_path / 'home'}", "plugins=[recording_plugin]", "network.plugin=recorder"],
                tmp_path / "out")
    expected = (around("data") + around("model") + around("scoring") + ["requirements"] + around("environment")
                + ["before:network", "error:network:StageError"]
                + around("teardown", "teardown:failed") + ["run_end:failed"])
    assert recording_plugin.calls == expected
    assert recording_plugin.released == ["marker"]
    import json

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == {"type": "StageError", "message": "recorder: this network cannot be configured",
                                "hint": "it is a test"}
