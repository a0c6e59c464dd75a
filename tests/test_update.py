"""``mode=update``: the local target end to end (a real served deployment replaced by a real new
server), the shared smoke-test comparison, and the ``update`` config block."""

from __future__ import annotations

import json
import signal
import textwrap

import numpy as np
import pytest
import requests

from aideploy import api
from aideploy.errors import ConfigError
from aideploy.update import SmokeResult, agreeing, check_traffic_steps
from conftest import SERVE_KEY, results_of, served, wait_for

AUTH = {"Authorization": f"Bearer {SERVE_KEY}"}
ROW = {"data": [[0.0] * 64]}


def record_of(cli, name: str) -> dict:
    return json.loads((cli.home / "deployments" / f"{name}.json").read_text())


# ----------------------------------------------------------------------------- local, end to end


def test_local_update_replaces_a_served_deployment(cli):
    with served(cli, "deployment_name=upd", "environment=current") as old_uri:
        old = record_of(cli, "upd")
        assert requests.post(old_uri, json=ROW, headers=AUTH, timeout=30).status_code == 200
        # A different model: version 2 of sklearn_digits, trained with another C.
        proc, out = cli.start("mode=update", "deployment_name=upd", "environment=current", "model.C=0.05",
                              env={"AIDEPLOY_SCORING_KEY": SERVE_KEY})
        try:
            wait_for(out / "endpoint.json", proc)
            new_uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
            record = record_of(cli, "upd")
            assert record["scoring_uri"] == new_uri != old_uri
            assert record["pid"] != old["pid"] and record["output_dir"] == str(out)
            answer = requests.post(new_uri, json=ROW, headers=AUTH, timeout=30)
            assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
            # The old server is gone, and so is the aideploy that served it.
            with pytest.raises(requests.ConnectionError):
                requests.post(old_uri, json=ROW, headers=AUTH, timeout=5)
            assert (cli.home / "models" / "sklearn_digits" / "2").exists()
        finally:
            proc.send_signal(signal.SIGINT)
            output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        assert "smoke test passed (20/20 agree)" in output
        assert results_of(out)["status"] == "ok"
        assert SERVE_KEY not in output
    assert not (cli.home / "deployments" / "upd.json").exists()


WRONG_SCORE = textwrap.dedent("""
    import json

    def init():
        pass

    def run(raw_data):
        rows = json.loads(raw_data)["data"]
        return {"predictions": [-1 for _ in rows]}  # never what the model says
""")


def test_a_failed_smoke_test_keeps_the_old_deployment(cli, tmp_path):
    src = tmp_path / "wrong"
    src.mkdir()
    (src / "score.py").write_text(WRONG_SCORE)
    with served(cli, "deployment_name=upd", "environment=current") as old_uri:
        before = record_of(cli, "upd")
        proc = cli("mode=update", "deployment_name=upd", "environment=current", "scoring=custom",
                   f"scoring.source_dir={src}", env={"AIDEPLOY_SCORING_KEY": SERVE_KEY})
        assert proc.returncode == 1, proc.stderr
        assert "failed its smoke test: sample 1 of 20: the new version predicts [-1]" in proc.stderr
        assert f"the old one still serves {old_uri}" in proc.stderr and "hint:" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert record_of(cli, "upd") == before
        assert requests.post(old_uri, json=ROW, headers=AUTH, timeout=30).status_code == 200
        assert results_of(proc.out)["status"] == "failed"


def test_updating_an_unknown_local_deployment_is_one_line(cli):
    proc = cli("mode=update", "deployment_name=nope", "environment=current", "data.limit=5")
    assert proc.returncode == 2, proc.stderr
    assert "there is no local deployment named 'nope' to update (known: none)" in proc.stderr
    assert "hint: start one with mode=serve" in proc.stderr and "Traceback" not in proc.stderr


def test_update_needs_a_deployment_name(tmp_path):
    with pytest.raises(ConfigError) as info:
        api.run(["mode=update", f"home={tmp_path / 'home'}"], tmp_path / "out")
    assert "mode=update needs the name" in str(info.value) and "deployment_name=" in info.value.hint


def test_local_update_plan(tmp_path):
    out = tmp_path / "out"
    results = api.run(["dry_run=true", "mode=update", "deployment_name=upd", f"home={tmp_path / 'home'}",
                       "environment=current", "update.smoke_samples=7"], out)
    assert results["status"] == "ok"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["mode"] == "update"
    assert [a["action"] for a in plan["actions"]] == [
        "read deployment record", "stage source directory", "start azmlinfsrv", "smoke test",
        "stop the old deployment", "write deployment record"]
    assert plan["actions"][3]["settings"]["samples"] == 7
    assert [a["action"] for a in plan["rollback"]] == ["stop the new azmlinfsrv"]


# ----------------------------------------------------------------------------- the smoke test's verdict


def test_agreeing_compares_labels_and_regression_values():
    assert agreeing([1, 2, 3], np.array([1, 2, 3]), regression=False) == 3
    assert agreeing([1, 2, 4], np.array([1, 2, 3]), regression=False) == 2
    assert agreeing(["1", "2"], np.array([1, 2]), regression=False) == 2  # JSON may turn labels into text
    assert agreeing([1, 2], np.array([1, 2, 3]), regression=False) == 0  # a missing answer agrees with nothing
    assert agreeing([0.5, 1.0 + 1e-12], np.array([0.5, 1.0]), regression=True) == 2
    assert agreeing([0.5, 1.01], np.array([0.5, 1.0]), regression=True) == 1


def test_a_smoke_result_is_ok_only_when_every_sample_agreed():
    assert SmokeResult(20, 20).ok
    assert not SmokeResult(20, 19, "sample 20 of 20: ...").ok
    assert not SmokeResult(0, 0).ok  # nothing sent proves nothing
    assert SmokeResult(3, 1, "sample 2 of 3: HTTP 500").summary() == {
        "ok": False, "samples": 3, "agreed": 1, "reason": "sample 2 of 3: HTTP 500"}


def _answering(body_of):
    """A real HTTP server on loopback whose POST answer is ``body_of(rows)``."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["data"]
            body = body_of(rows).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("answer, ok", [
    (lambda labels: json.dumps({"predictions": labels}), True),
    (lambda labels: json.dumps(labels), True),  # a bare list
    (lambda labels: json.dumps(json.dumps({"predictions": labels})), True),  # a score.py that returned json.dumps
    (lambda labels: json.dumps({"predictions": [(v + 1) % 10 for v in labels]}), False),
    (lambda labels: "not json", False),
])
def test_the_smoke_test_reads_answers_as_the_client_does(answer, ok):
    from types import SimpleNamespace

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from aideploy.artifacts import Dataset
    from aideploy.update import smoke_test
    from aideploy_scoring.model_sklearn import SklearnModel

    X, y = load_digits(return_X_y=True)
    adapter = SklearnModel(LogisticRegression(max_iter=500).fit(X[:600], y[:600]))
    server = _answering(lambda rows: answer(adapter.predict(np.asarray(rows)).predictions.tolist()))
    try:
        result = smoke_test(f"http://127.0.0.1:{server.server_port}/score", {},
                            SimpleNamespace(adapter=adapter, task=adapter.task), Dataset("digits", X[600:]),
                            samples=3, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert result.ok is ok, result.reason
    assert result.samples == 3 and result.agreed == (3 if ok else 0)


# ----------------------------------------------------------------------------- the update block


@pytest.mark.parametrize("steps", [[10, 50, 100], [100], [1, 2, 3, 100]])
def test_traffic_steps_that_rise_to_100_are_accepted(steps):
    assert check_traffic_steps(steps) == steps


@pytest.mark.parametrize("override,message", [
    ("update.traffic_steps=[10,50]", "end at 50%"),
    ("update.traffic_steps=[50,10,100]", "do not rise"),
    ("update.traffic_steps=[0,100]", "0 is not a whole percentage"),
    ("update.traffic_steps=[50,150]", "150 is not a whole percentage"),
    ("update.traffic_steps=[]", "is empty"),
    ("update.smoke_samples=0", "update.smoke_samples=0 is out of range"),
])
def test_a_bad_update_block_fails_before_any_stage(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        api.run(["dry_run=true", "mode=update", "deployment_name=upd", f"home={tmp_path / 'home'}", override],
                tmp_path / "out")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.hint
    assert set(results_of(tmp_path / "out")["stage_seconds"]) == {"teardown"}


def test_a_wrongly_typed_traffic_step_is_one_line(cli):
    proc = cli("dry_run=true", "mode=update", "deployment_name=upd", "update.traffic_steps=[ten]")
    assert proc.returncode == 2
    assert "update.traffic_steps" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
