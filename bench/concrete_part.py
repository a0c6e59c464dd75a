"""The Concrete-ML (Zama) part of ``bench/run.py``; runs in ``bench/.venv-concrete``, never in the project venv.

    bench/.venv-concrete/bin/python bench/concrete_part.py --npz models.npz --out concrete.json [--quick]

``models.npz`` (written by ``bench/run.py``) holds, for each model name ``M`` listed in
``names``: ``M_coef`` (classes x features), ``M_intercept``, ``M_classes``, ``M_X_train``
(calibration/compilation set) and ``M_X_test``. The fitted scikit-learn weights are reused as they
are (``LogisticRegression.from_sklearn_model``, 8-bit quantisation, Concrete-ML's default for
linear models), so Concrete-ML scores the same model on the same data as the other schemes.

Per model it measures, with Concrete-ML's deployment split (FHEModelDev / FHEModelClient /
FHEModelServer): compile time, key-generation time, serialized evaluation-key bytes, query and
response bytes of one sample, client encrypt/decrypt ms, the server's median time for one sample
from serialized query bytes to serialized response bytes (evaluation keys deserialized once and
reused, as a service would cache them), and batch throughput of ``decision_function(X,
fhe="execute")``. Writes one JSON object to ``--out``.

Setting up the venv (concrete-ml 1.9.0 pins torch==2.3.1; we install it with ``--no-deps`` next to
the local torch 2.13.0 CPU wheel, see bench/RESULTS.md). torch >= 2.9 exports ONNX with the dynamo
exporter by default, which needs ``onnxscript``; hummingbird (used by Concrete-ML for linear models)
expects the legacy TorchScript exporter, so ``torch.onnx.export`` defaults to ``dynamo=False`` here.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable


def _patch_torch_onnx() -> None:
    import torch.onnx

    original = torch.onnx.export

    @functools.wraps(original)
    def export(*args, **kwargs):
        kwargs.setdefault("dynamo", False)
        return original(*args, **kwargs)

    torch.onnx.export = export


def _patch_named_tensors() -> None:
    """brevitas 0.10.2 (Concrete-ML's quantisation-aware layers) calls ``Tensor.rename(None)`` to
    drop named-tensor names on every forward pass; torch 2.13 has no named tensors, so a tensor
    has no names and ``rename(None)`` is the identity it would be."""
    import torch

    if hasattr(torch.Tensor, "rename"):
        return

    def rename(self, *names, **rename_map):
        if rename_map or any(n is not None for n in names):
            raise NotImplementedError("named tensors are gone in this torch; only rename(None) is supported")
        return self

    torch.Tensor.rename = rename


def _median_ms(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), out


def deploy(model, path: str) -> tuple:
    """Concrete-ML's deployment split for a compiled ``model`` under ``path``: ``(client, server,
    serialized evaluation keys, deserialized keys, key-generation seconds)``; the keys are
    deserialized once, as a service would cache them (like our loaded keys)."""
    from concrete import fhe
    from concrete.ml.deployment import FHEModelClient, FHEModelDev, FHEModelServer

    FHEModelDev(os.path.join(path, "model"), model).save()
    client = FHEModelClient(os.path.join(path, "model"), os.path.join(path, "keys"))
    t0 = time.perf_counter()
    client.generate_private_and_evaluation_keys()
    keygen_s = time.perf_counter() - t0
    eval_keys = client.get_serialized_evaluation_keys()
    server = FHEModelServer(os.path.join(path, "model"))
    return client, server, eval_keys, fhe.EvaluationKeys.deserialize(eval_keys), keygen_s


def bench_model(name: str, data, reps: int, batch: int, workdir: str) -> dict:
    import numpy as np
    from concrete.ml.sklearn import LogisticRegression
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    coef, intercept = data[f"{name}_coef"], data[f"{name}_intercept"]
    X_train, X_test = data[f"{name}_X_train"], data[f"{name}_X_test"]
    sk = SkLogisticRegression()
    sk.coef_, sk.intercept_, sk.classes_ = coef, intercept, data[f"{name}_classes"]
    sk.n_features_in_ = coef.shape[1]
    reference = X_test @ coef.T + intercept

    t0 = time.perf_counter()
    model = LogisticRegression.from_sklearn_model(sk, X_train, n_bits=8)
    model.compile(X_train)
    compile_s = time.perf_counter() - t0
    stats = model.fhe_circuit.statistics

    client, server, eval_keys, keys_obj, keygen_s = deploy(model, os.path.join(workdir, name))

    samples = [X_test[i:i + 1] for i in range(min(8, len(X_test)))]
    queries = [client.quantize_encrypt_serialize(x) for x in samples]
    encrypt_ms, _ = _median_ms(lambda: client.quantize_encrypt_serialize(samples[0]), max(5, reps // 2))
    server.run(queries[0], keys_obj)  # warm-up
    counter = iter(range(10**9))
    server_ms, _ = _median_ms(lambda: server.run(queries[next(counter) % len(queries)], keys_obj), reps)
    responses = [server.run(q, keys_obj) for q in queries]
    decrypt_ms, _ = _median_ms(lambda: client.deserialize_decrypt_dequantize(responses[0]), max(5, reps // 2))
    logits = np.vstack([client.model.dequantize_output(client.deserialize_decrypt(r)) for r in responses])

    Xb = X_test[:batch]
    t0 = time.perf_counter()
    batch_scores = model.decision_function(Xb, fhe="execute")
    batch_s = time.perf_counter() - t0
    all_scores = np.vstack([logits, batch_scores])
    all_ref = np.vstack([reference[: len(samples)], reference[: len(Xb)]])
    return {
        "model": name,
        "n_bits": 8,
        "compile_s": compile_s,
        "keygen_s": keygen_s,
        "pbs_count": int(stats.get("programmable_bootstrap_count", -1)),
        "size_of_inputs": int(stats.get("size_of_inputs", -1)),
        "size_of_outputs": int(stats.get("size_of_outputs", -1)),
        "server_ms": server_ms,
        "encrypt_ms": encrypt_ms,
        "decrypt_ms": decrypt_ms,
        "key_bytes": len(eval_keys),
        "query_bytes": len(queries[0]),
        "response_bytes": len(responses[0]),
        "batch_samples": len(Xb),
        "batch_sps": len(Xb) / batch_s,
        "max_abs_err": float(np.abs(all_scores - all_ref).max()),
        "argmax_agreement": float((all_scores.argmax(1) == all_ref.argmax(1)).mean()),
        "reps": reps,
    }


def run_part(out: str, npz: str, prefix: str, bench: Callable[[Any, str], dict]) -> None:
    """Imports Concrete-ML (after the torch workarounds), runs ``bench(data from npz, workdir)``
    and writes ``{"python", "concrete_ml", "torch", "numpy", "models": <its result>}`` -- or the
    error in place of the models -- to ``out`` as JSON; never raises (the caller's bench goes on)."""
    result: dict = {"python": sys.version.split()[0]}
    try:
        warnings.filterwarnings("ignore")
        import numpy as np
        import torch

        _patch_torch_onnx()
        _patch_named_tensors()
        import concrete.ml

        result.update({"concrete_ml": concrete.ml.__version__, "torch": torch.__version__, "numpy": np.__version__})
        with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
            result["models"] = bench(np.load(npz), workdir)
    except Exception as exc:  # report, never crash the caller's bench
        result["error"] = f"{type(exc).__name__}: {exc}"
    with open(out, "w") as fh:
        json.dump(result, fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    def bench(data, workdir: str) -> dict:
        models = {}
        for name in (str(n) for n in data["names"]):
            n_features = data[f"{name}_coef"].shape[1]
            reps = (5 if args.quick else 15) if n_features > 200 else (10 if args.quick else 40)
            batch = (3 if args.quick else 10) if n_features > 200 else (10 if args.quick else 50)
            models[name] = bench_model(name, data, reps, batch, workdir)
        return models

    run_part(args.out, args.npz, "aideploy-concrete-", bench)


if __name__ == "__main__":
    main()
