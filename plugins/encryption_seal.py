"""``encryption=seal``: seed 000's encrypted inference with ``encrypted-inference`` 0.9.

The client (``EILinearRegressionClient``, never verbose: verbose prints the secret key) makes
the keys, uploads the public ones to the key store as blob ``<key_id>`` and sends the
service a read-only SAS URL for that blob with every encrypted sample. The service returns
one encrypted score per class; the client decrypts them.
"""

import base64
import binascii
import ctypes
import json

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import KeySession, Request, Requests, Scores
from aideploy.errors import ConfigError, PredictError
from aideploy.keystore import publish_public_keys
from aideploy.linear import client_runtime, features, linear_model

SCHEME = "seal"
RUNTIME = ["encrypted-inference==0.9", "azure-storage-blob>=12.19", "cachetools>=5.3"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME + client_runtime(ctx) if ctx.cfg.encryption.plugin == SCHEME else None


@hookimpl
def aideploy_check_model(ctx, model):
    if ctx.cfg.encryption.plugin != SCHEME:
        return
    linear = linear_model(model, SCHEME)
    from aideploy_scoring.seal_ei import SealLinearServer

    try:  # the service builds the same server; its limits are the library's
        SealLinearServer(linear.coef, linear.intercept)
    except ValueError as exc:
        raise ConfigError(f"encryption=seal cannot serve {model.name}:{model.version}: {exc}",
                          hint="encryption=fast serves a wider range of weights; or rescale the model") from None


@hookimpl
def aideploy_setup_keys(ctx):
    from encrypted.inference.eiclient import EILinearRegressionClient

    client = EILinearRegressionClient(verbose=False)
    key_id, public_keys = client.get_public_keys()
    url = publish_public_keys(ctx, key_id, public_keys)
    return KeySession(SCHEME, key_id, len(public_keys), client, {"key_id": key_id, "key_url": url}, register=True)


@hookimpl
def aideploy_encrypt(ctx, keys, dataset):
    return Requests([Request(json.dumps({"data": keys.client.encrypt(x), **keys.public}).encode(), 1)
                     for x in features(ctx, dataset)])


def decrypt_scores(client, encrypted_scores: list) -> np.ndarray:
    """``EILinearRegressionClient.decrypt``, minus its per-byte ctypes copy of each ciphertext.

    The library builds each ~230 KB buffer as ``(c_byte * n)(*data)``, about 35 ms per class;
    ``from_buffer_copy`` is one memcpy. Same native call, same result.
    """
    from encrypted.inference.internal import einative, eiutils

    scores = np.empty(len(encrypted_scores), dtype=np.float64)
    for i, b64 in enumerate(encrypted_scores):
        if not isinstance(b64, str):
            raise TypeError(f"encrypted score {i} is a {type(b64).__name__}, not a base64 string")
        raw = base64.b64decode(b64, validate=True)
        buffer = (ctypes.c_byte * len(raw)).from_buffer_copy(raw)
        value = ctypes.c_double()
        eiutils.handle_error(einative._einative.DecryptResult(client.seal_instance.native_ptr, ctypes.c_uint64(len(raw)),
                                                             buffer, ctypes.byref(value)))
        scores[i] = value.value
    return scores


@hookimpl
def aideploy_decrypt(keys, responses):
    rows = []
    for index, response in enumerate(responses.items, start=1):
        try:
            encrypted_scores = json.loads(response.body)
            if not isinstance(encrypted_scores, list):
                raise TypeError(type(encrypted_scores).__name__)
            rows.append(decrypt_scores(keys.client, encrypted_scores))
        except (ValueError, TypeError, OSError, binascii.Error) as exc:
            raise PredictError(f"answer {index} is not a list of encrypted scores: {exc}",
                               hint="is the service running aideploy's score.py with encrypted-inference?") from None
    return Scores(np.asarray(rows, dtype=np.float64))
