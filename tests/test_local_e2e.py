"""End to end through the real ``aideploy`` command and the real azmlinfsrv."""

from __future__ import annotations

import json
import signal

import numpy as np
import requests

from conftest import results_of, wait_for
from aideploy.datasets import write_idx


def test_default_round_trip(cli):
    proc = cli()
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["status"] == "ok"
    assert results["options"] == {"data": "digits", "model": "sklearn_digits", "scoring": "builtin", "environment": "conda",
                                  "network": "public", "encryption": "none", "target": "local",
                                  "keystore": "azurite", "tracking": "none"}
    assert results["n_samples"] == 450
    assert results["accuracy"] >= 0.95
    assert results["agreement"] == 1.0
    assert results["accuracy"] == results["plaintext_accuracy"]
    assert results["max_probability_error"] < 1e-9 and "max_score_error" not in results  # probabilities say it
    assert set(results["latency_ms"]) == {"p50", "p90", "p99"}
    assert 0 < results["latency_ms"]["p50"] <= results["latency_ms"]["p99"]
    assert results["bytes"]["request"] > 0 and results["bytes"]["response"] > 0 and results["bytes"]["keys"] == 0
    for stage in ("data", "model", "deploy", "predict", "teardown"):
        assert stage in results["stage_seconds"]
    # progress per stage and a summary on the terminal, and the spec like the seed's myenv.yml
    assert "[6/11] deploy" in proc.stderr and "accuracy" in proc.stderr
    spec = (proc.out / "environment.yml").read_text()
    assert "azureml-inference-server-http" in spec and "python=3.11" in spec
    assert (proc.out / ".hydra" / "config.yaml").exists()
    # the model was registered as version 1; a second identical training reuses it
    version = cli.home / "models" / "sklearn_digits" / "1"
    assert (version / "model.pkl").exists()
    assert json.loads((version / "aideploy-model.json").read_text())["kind"] == "sklearn"


def test_unknown_option_fails_listing_options(cli):
    proc = cli("target=nope")
    assert proc.returncode != 0
    assert "Could not find 'target/nope'" in proc.stderr and "local" in proc.stderr


def test_malformed_override_fails(cli):
    proc = cli("target.port=[")
    assert proc.returncode != 0 and "override" in proc.stderr.lower()


def test_missing_model_file(cli, tmp_path):
    proc = cli("model=sklearn_pickle", f"model.path={tmp_path / 'nope.pkl'}")
    assert proc.returncode == 2
    assert "error: model file not found" in proc.stderr and "hint:" in proc.stderr
    assert results_of(proc.out)["status"] == "failed"


def mnist_like(tmp_path, n=30, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_feature_count_mismatch(cli, tmp_path):
    mnist_like(tmp_path)
    proc = cli("data=mnist_idx", f"data.images={tmp_path / 't10k-images-idx3-ubyte.gz'}",
               f"data.labels={tmp_path / 't10k-labels-idx1-ubyte.gz'}")
    assert proc.returncode == 2
    assert "mnist_idx has 784 feature columns but model sklearn_digits:1 takes 64" in proc.stderr


def test_mnist_idx_with_a_pickled_784_feature_model(cli, tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression

    images, labels = mnist_like(tmp_path, n=40)
    X = images.reshape(len(images), -1) / 255.0
    model = LogisticRegression(max_iter=500).fit(X, labels)
    joblib.dump(model, tmp_path / "sklearn_mnist_model.pkl")
    proc = cli("data=mnist_idx", f"data.images={tmp_path / 't10k-images-idx3-ubyte.gz'}",
               f"data.labels={tmp_path / 't10k-labels-idx1-ubyte.gz'}",
               "model=sklearn_pickle", f"model.path={tmp_path / 'sklearn_mnist_model.pkl'}")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["n_samples"] == 40 and results["agreement"] == 1.0


def test_server_init_failure_shows_log_and_leaves_nothing(cli):
    proc = cli("plugins=[corrupting_plugin]")
    assert proc.returncode == 1
    assert "the scoring server did not start" in proc.stderr
    assert "User's init function failed" in proc.stderr or "init" in proc.stderr
    assert "hint:" in proc.stderr
    assert results_of(proc.out)["status"] == "failed"


def test_environment_mismatch_lists_what_is_missing(cli):
    proc = cli("environment=current", 'environment.pip=[numpy,"no-such-package-xyz>=1"]', "environment.python=3.9")
    assert proc.returncode == 2
    assert "no-such-package-xyz>=1 (not installed)" in proc.stderr and "python 3.9" in proc.stderr


def test_serve_until_interrupted(cli):
    key = "test-key-0123456789"
    proc, out = cli.start("mode=serve", "deployment_name=servetest", env={"AIDEPLOY_SCORING_KEY": key})
    try:
        wait_for(out / "endpoint.json", proc)
        endpoint = json.loads((out / "endpoint.json").read_text())
        assert endpoint["target"] == "local" and endpoint["encryption"] == "none" and endpoint["auth"] is True
        assert key not in (out / "endpoint.json").read_text()
        assert (cli.home / "deployments" / "servetest.json").exists()
        body = {"data": [[0.0] * 64]}
        ok = requests.post(endpoint["scoring_uri"], json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["probabilities"][0]) == 10 and len(ok.json()["predictions"]) == 1
        assert requests.post(endpoint["scoring_uri"], json=body, timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert not (cli.home / "deployments" / "servetest.json").exists()
    assert results_of(out)["status"] == "ok"


def test_predict_mode_and_delete_mode_against_a_served_deployment(cli):
    key = "another-key-987654321"
    server, out = cli.start("mode=serve", "deployment_name=shared", env={"AIDEPLOY_SCORING_KEY": key})
    try:
        wait_for(out / "endpoint.json", server)
        uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
        proc = cli("mode=predict", f"scoring_uri={uri}", "data.limit=25", "model=sklearn_digits",
                   env={"AIDEPLOY_SCORING_KEY": key})
        assert proc.returncode == 0, proc.stderr
        results = results_of(proc.out)
        assert results["n_samples"] == 25 and results["agreement"] == 1.0
        assert "deploy" not in results["stage_seconds"]
        deleted = cli("mode=delete", "deployment_name=shared")
        assert deleted.returncode == 0, deleted.stderr
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # aideploy tears its server down; a kill would orphan it
            server.wait(timeout=60)
    assert not (cli.home / "deployments" / "shared.json").exists()
