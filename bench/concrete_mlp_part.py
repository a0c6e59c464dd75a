"""The Concrete-ML (Zama) part of ``bench/mlp_bench.py --concrete``; runs in ``bench/.venv-concrete``.

    bench/.venv-concrete/bin/python bench/concrete_mlp_part.py --npz mlps.npz --out concrete_mlp.json [--samples 3]

``mlps.npz`` (written by ``bench/mlp_bench.py``) holds, for each model name ``M`` listed in
``names``: ``M_hidden`` (hidden units), ``M_X_train``, ``M_y_train``, ``M_X_test``, ``M_y_test``.
For each it trains ``concrete.ml.sklearn.NeuralNetClassifier`` with the issue's settings (one
hidden layer of ``M_hidden`` ReLU units, 4-bit weights and activations, quantisation-aware
training), compiles it on the training set and measures, with Concrete-ML's deployment split
(FHEModelDev / FHEModelClient / FHEModelServer): compile and key-generation time, serialized
evaluation-key bytes, query and response bytes of one sample, and the server's time per sample
from serialized query bytes to serialized response bytes (``FHEModelServer.run`` with the
evaluation keys deserialized once, as a service would cache them, after one untimed warm-up run;
as ``bench/concrete_part.py`` does).  Each FHE run takes seconds, so only ``--samples`` test samples run encrypted; their
predictions are compared with the same quantised model run in the clear (``fhe="disable"``),
whose accuracy is measured on the whole test set.  Writes one JSON object to ``--out``.

Hidden width: Concrete-ML sizes the hidden layer as ``int(input_dim * n_hidden_neurons_multiplier)``,
so the multiplier is ``(hidden + 0.5) / input_dim``.  Two torch 2.13 workarounds: ONNX export
defaults to the TorchScript exporter (``concrete_part._patch_torch_onnx``), and brevitas 0.10.2
(Concrete-ML's quantisation-aware layers) calls ``Tensor.rename(None)`` to drop named-tensor
names on every forward pass, but torch 2.13 no longer has named tensors
(``concrete_part._patch_named_tensors``).
"""

from __future__ import annotations

import argparse
import os
import time

from concrete_part import deploy, run_part


def bench_model(name: str, data, n_samples: int, workdir: str) -> dict:
    import numpy as np
    import torch
    from concrete.ml.sklearn import NeuralNetClassifier

    hidden = int(data[f"{name}_hidden"])
    X_train = data[f"{name}_X_train"].astype(np.float32)
    y_train = data[f"{name}_y_train"].astype(np.int64)
    X_test = data[f"{name}_X_test"].astype(np.float32)
    y_test = data[f"{name}_y_test"].astype(np.int64)
    n_in = X_train.shape[1]

    torch.manual_seed(0)
    model = NeuralNetClassifier(
        module__n_layers=2, module__n_w_bits=4, module__n_a_bits=4,
        module__n_hidden_neurons_multiplier=(hidden + 0.5) / n_in,
        module__activation_function=torch.nn.ReLU, max_epochs=30, verbose=0)
    t0 = time.perf_counter()
    model.fit(X_train, y_train)
    fit_s = time.perf_counter() - t0
    sizes = [int(layer.weight.shape[1]) for layer in model.base_module.features
             if hasattr(layer, "weight") and getattr(layer.weight, "ndim", 0) == 2]
    t0 = time.perf_counter()
    model.compile(X_train)
    compile_s = time.perf_counter() - t0
    clear = model.predict(X_test, fhe="disable")

    client, server, eval_keys, keys_obj, keygen_s = deploy(model, os.path.join(workdir, name))

    queries = [client.quantize_encrypt_serialize(X_test[i:i + 1]) for i in range(n_samples)]
    server.run(queries[0], keys_obj)  # warm-up (loads the server circuit), untimed
    server_s, responses = [], []
    for q in queries:
        t0 = time.perf_counter()
        responses.append(server.run(q, keys_obj))
        server_s.append(time.perf_counter() - t0)
    fhe_pred = np.array([int(np.argmax(client.deserialize_decrypt_dequantize(r))) for r in responses])
    fhe_pred = model.classes_[fhe_pred]
    return {
        "model": name,
        "sizes": [n_in, *sizes[1:], len(model.classes_)] if sizes else [n_in, hidden, len(model.classes_)],
        "n_w_bits": 4, "n_a_bits": 4,
        "fit_s": fit_s, "compile_s": compile_s, "keygen_s": keygen_s,
        "server_ms": [1e3 * s for s in server_s],
        "server_ms_median": 1e3 * float(np.median(server_s)),
        "key_bytes": len(eval_keys),
        "query_bytes": len(queries[0]),
        "response_bytes": len(responses[0]),
        "fhe_samples": n_samples,
        "fhe_vs_clear_agreement": float((fhe_pred == clear[:n_samples]).mean()),
        "fhe_accuracy": float((fhe_pred == y_test[:n_samples]).mean()),
        "clear_quantized_accuracy": float((clear == y_test).mean()),
        "test_samples": int(len(y_test)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=3, help="test samples run under FHE per model")
    args = ap.parse_args()
    run_part(args.out, args.npz, "aideploy-concrete-mlp-",
             lambda data, workdir: {str(n): bench_model(str(n), data, max(1, args.samples), workdir)
                                    for n in data["names"]})


if __name__ == "__main__":
    main()
