"""SealLinearServer against real SEAL (libeisdk from encrypted-inference 0.9); no mocks.

Bad-input tests run in this process on purpose: libeisdk aborts the process on input it
cannot load, so a validation gap shows up as a crashed test run.
"""

import base64
import ctypes
import os
import struct
import zlib

import numpy as np
import pytest
from encrypted.inference.eiclient import EILinearRegressionClient
from encrypted.inference.eiserver import EIServer
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

from aideploy_scoring import seal_ei
from aideploy_scoring.seal_ei import PreparedKeys, SealInputError, SealLinearServer, prepare_keys

# SEAL 3.5 object header: magic, header size, major, minor, compression mode, reserved, total size.
HEADER = struct.Struct("<HBBBBHQ")
# A ciphertext's members: parms_id (32), is_ntt_form (1), size, degree, RNS count, scale
# (8 each), then c0 as an IntArray: header (16) and word count (8).
SCALE_OFFSET = 32 + 1 + 3 * 8
C0_OFFSET = SCALE_OFFSET + 8 + 16 + 8
# GaloisKeys: parms_id (32), slot count (8), slot 0's key count (8), slot 1's key count (8),
# then slot 1's first PublicKey: its own header (16) and a ciphertext.
GALOIS_SLOT0_COUNT = 40
GALOIS_FIRST_C0 = 56 + 16 + C0_OFFSET

N_SAMPLES = 8  # ~2.6 s each; the arithmetic is exact per sample, so a bug shows in every one


@pytest.fixture(scope="module")
def client():
    return EILinearRegressionClient()  # never verbose=True: it prints the secret key


@pytest.fixture(scope="module")
def public_keys(client):
    return client.get_public_keys()[1]


@pytest.fixture(scope="module")
def prepared(public_keys):
    return prepare_keys(public_keys)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    return x_train, x_test, y_train, y_test


@pytest.fixture(scope="module")
def model(digits):
    x_train, _, y_train, _ = digits
    return LogisticRegression(max_iter=5000).fit(x_train, y_train)


@pytest.fixture(scope="module")
def server(model):
    return SealLinearServer(model.coef_, model.intercept_)


@pytest.fixture(scope="module")
def good_ct(client, digits):
    """A valid request body for the 64-feature digits model: one ciphertext."""
    return client.encrypt(digits[1][0])


def raw_of(cts):
    return base64.b64decode(cts[0])


def b64(blob):
    return base64.b64encode(blob).decode("ascii")


def plain_of(blob):
    assert HEADER.unpack_from(blob)[4] == 1, "the client compresses with deflate"
    return zlib.decompress(blob[HEADER.size :])


def seal_object(plain, mode=1):
    body = zlib.compress(plain) if mode == 1 else plain
    return HEADER.pack(0xA15E, 16, 3, 5, mode, 0, HEADER.size + len(body)) + body


def with_header(blob, **fields):
    names = ["magic", "header_size", "major", "minor", "mode", "reserved", "size"]
    values = dict(zip(names, HEADER.unpack_from(blob)))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + blob[HEADER.size :]


def put_u64(buf, offset, value, fmt="<Q"):
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def flip(blob, offset):
    return blob[:offset] + bytes([blob[offset] ^ 0xFF]) + blob[offset + 1 :]


# --- correctness ----------------------------------------------------------------------------


def test_round_trip_matches_decision_function(client, prepared, server, model, digits):
    x_test = digits[1][:N_SAMPLES]
    scores = np.array([client.decrypt(server.predict(client.encrypt(x), prepared)) for x in x_test])
    expected = model.decision_function(x_test)
    assert scores.shape == expected.shape == (N_SAMPLES, 10)
    assert np.abs(scores - expected).max() <= 1e-3
    assert (scores.argmax(axis=1) == expected.argmax(axis=1)).mean() == 1.0


def test_byte_identical_to_library_eiserver(public_keys, prepared, model, good_ct):
    # Three classes keep the slow library call (~1 s per class) short; the native call is the same.
    coef, intercept = model.coef_[:3], model.intercept_[:3]
    expected = EIServer(coef, intercept).predict(good_ct, public_keys)
    ours = SealLinearServer(coef, intercept)
    assert ours.predict(good_ct, prepared) == expected
    assert ours.predict(good_ct, public_keys) == expected  # raw key bytes: prepared per call


def test_binary_classifier_with_1d_coef(client, prepared, digits):
    x_train, x_test, y_train, _ = digits
    clf = LogisticRegression(max_iter=5000).fit(x_train, y_train == 3)
    server = SealLinearServer(clf.coef_.ravel(), clf.intercept_)  # (64,) and length-1 intercept
    assert server.n_classes == 1
    x = x_test[:5]
    scores = np.array([client.decrypt(server.predict(client.encrypt(row), prepared))[0] for row in x])
    expected = clf.decision_function(x)
    assert np.abs(scores - expected).max() <= 1e-3
    assert ((scores > 0) == (expected > 0)).all()


def test_regressor_with_scalar_intercept(client, prepared, digits):
    x_train, x_test, y_train, _ = digits
    reg = LinearRegression().fit(x_train, y_train.astype(float))
    assert reg.coef_.ndim == 1 and np.ndim(reg.intercept_) == 0
    server = SealLinearServer(reg.coef_, reg.intercept_)
    x = x_test[:3]
    scores = np.array([client.decrypt(server.predict(client.encrypt(row), prepared))[0] for row in x])
    assert np.abs(scores - reg.predict(x)).max() <= 1e-3


def test_uncompressed_ciphertext_is_accepted(client, prepared, server, model, digits, good_ct):
    # SEAL loads uncompressed objects too, so the validator must not insist on deflate.
    plain_ct = [b64(seal_object(plain_of(raw_of(good_ct)), mode=0))]
    scores = client.decrypt(server.predict(plain_ct, prepared))
    np.testing.assert_allclose(scores, model.decision_function(digits[1][:1])[0], atol=1e-3)


def test_coefficient_bound_is_the_real_modulus(client, prepared, server, good_ct):
    # q-1 must pass validation *and* native loading (a too-large bound would abort this
    # process here); q itself must be rejected.
    q0 = int(seal_ei._LAYOUT.ciphertext._moduli[0, 0])
    plain = plain_of(raw_of(good_ct))
    edge = [b64(seal_object(put_u64(plain, C0_OFFSET, q0 - 1)))]
    assert len(client.decrypt(server.predict(edge, prepared))) == 10
    with pytest.raises(SealInputError, match="out of range"):
        server.predict([b64(seal_object(put_u64(plain, C0_OFFSET, q0)))], prepared)


def test_prepared_keys_report_size(prepared, public_keys):
    assert isinstance(prepared, PreparedKeys)
    assert prepared.nbytes == len(public_keys)


# --- model validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "coef, intercept, message",
    [
        (np.ones((2, 3, 4)), [0.0, 0.0], "do not form"),
        (np.ones((3, 4)), [0.0, 0.0], "do not form"),
        (np.ones((3, 0)), 0.0, "do not form"),
        (np.array([[1.0, np.nan]]), 0.0, "finite"),
        (np.ones((1, 4)), np.inf, "finite"),
        (np.ones((1, 4)) * 1e13, 0.0, "within"),
        (np.ones((1, 4)), 1e20, "within"),
        (np.vstack([np.ones(4), np.zeros(4)]), [0.0, 1.0], r"rows \[1\].*all zero"),
        (np.full((1, 4), 1e-12), 0.0, "all zero"),
    ],
)
def test_bad_model_is_refused(coef, intercept, message):
    with pytest.raises(ValueError, match=message):
        SealLinearServer(coef, intercept)


def test_scalar_intercept_applies_to_every_row(client, prepared):
    coef = np.vstack([np.full(8, 0.5), np.full(8, -0.25)])
    server = SealLinearServer(coef, 1.5)
    x = np.linspace(0, 1, 8)
    scores = client.decrypt(server.predict(client.encrypt(x), prepared))
    np.testing.assert_allclose(scores, coef @ x + 1.5, atol=1e-3)


# --- untrusted input -------------------------------------------------------------------------


def _bad_ciphertexts():
    """(name, request builder from (good ciphertext list, its raw bytes, its plaintext), message)."""
    return [
        ("not a list", lambda cts, raw, plain: cts[0], "non-empty list"),
        ("None", lambda cts, raw, plain: None, "non-empty list"),
        ("empty", lambda cts, raw, plain: [], "non-empty list"),
        ("bytes item", lambda cts, raw, plain: [raw], "expected a base64 string"),
        ("too many", lambda cts, raw, plain: cts * 2, "expected 1 ciphertext"),
        ("bad base64", lambda cts, raw, plain: ["!!!!" + cts[0][4:]], "not valid base64"),
        ("non-ascii", lambda cts, raw, plain: ["\u00e9" * 8], "not valid base64"),
        ("huge", lambda cts, raw, plain: ["A" * 10_000_000], "too long"),
        ("tiny", lambda cts, raw, plain: [b64(b"hello")], "truncated"),
        ("truncated", lambda cts, raw, plain: [b64(raw[:-100])], "header says"),
        ("trailing", lambda cts, raw, plain: [b64(raw + b"\0" * 8)], "trailing bytes"),
        ("bad magic", lambda cts, raw, plain: [b64(with_header(raw, magic=0x1234))], "bad header"),
        ("bad version", lambda cts, raw, plain: [b64(with_header(raw, minor=6))], "SEAL version 3.6"),
        ("bad mode", lambda cts, raw, plain: [b64(with_header(raw, mode=2))], "compression mode 2"),
        ("size lies", lambda cts, raw, plain: [b64(with_header(raw, size=len(raw) + 9))], "header says"),
        ("flipped byte", lambda cts, raw, plain: [b64(flip(raw, 5000))], "ciphertext 0: "),
        (
            "random body",
            lambda cts, raw, plain: [b64(raw[:16] + os.urandom(len(raw) - 16))],
            "corrupt compressed data",
        ),
        ("long content", lambda cts, raw, plain: [b64(seal_object(plain + b"xx"))], "more than the expected"),
        (
            "tampered scale",
            lambda cts, raw, plain: [b64(seal_object(put_u64(plain, SCALE_OFFSET, 2.0**100, fmt="<d")))],
            "metadata",
        ),
        ("tampered parms_id", lambda cts, raw, plain: [b64(seal_object(flip(plain, 0)))], "metadata"),
        (
            "coefficient out of range",
            lambda cts, raw, plain: [b64(seal_object(put_u64(plain, C0_OFFSET + 8 * 5, 2**64 - 1)))],
            "out of range",
        ),
    ]


BAD_CIPHERTEXTS = _bad_ciphertexts()


@pytest.mark.parametrize("build, message", [c[1:] for c in BAD_CIPHERTEXTS], ids=[c[0] for c in BAD_CIPHERTEXTS])
def test_bad_ciphertexts_are_rejected(server, prepared, good_ct, build, message):
    raw = raw_of(good_ct)
    with pytest.raises(SealInputError, match=message):
        server.predict(build(good_ct, raw, plain_of(raw)), prepared)


def test_too_few_ciphertexts_for_wide_model(prepared, good_ct):
    # libeisdk would silently compute a partial dot product over the first ciphertext only.
    wide = SealLinearServer(np.full((2, 5000), 0.01), [0.0, 0.0])
    assert wide.n_ciphertexts == 2
    with pytest.raises(SealInputError, match="expected 2 ciphertext"):
        wide.predict(good_ct, prepared)


def _tamper_galois(public_keys, offset, value):
    """Public keys whose Galois-keys object has one u64 changed, then recompressed."""
    galois_size = HEADER.unpack_from(public_keys)[6]
    galois = seal_object(put_u64(plain_of(public_keys[:galois_size]), offset, value))
    return galois + public_keys[galois_size:]


def _bad_keys():
    """(name, key builder from the good key bytes, message)."""
    return [
        ("str", lambda pk: b64(pk[:1000]), "must be bytes"),
        ("None", lambda pk: None, "must be bytes"),
        ("empty", lambda pk: b"", "Galois keys: truncated"),
        ("truncated", lambda pk: pk[: len(pk) // 2], "Galois keys: header says"),
        ("random", lambda pk: os.urandom(len(pk)), "Galois keys: not a SEAL object"),
        ("galois only", lambda pk: pk[: HEADER.unpack_from(pk)[6]], "relinearisation keys: truncated"),
        (
            "swapped",
            lambda pk: pk[HEADER.unpack_from(pk)[6] :] + pk[: HEADER.unpack_from(pk)[6]],
            "Galois keys: .*bytes of content",
        ),
        ("trailing", lambda pk: pk + b"\0", "1 trailing bytes"),
        ("flipped byte", lambda pk: flip(pk, 5000), "public keys: Galois keys: "),
        ("extra key slot", lambda pk: _tamper_galois(pk, GALOIS_SLOT0_COUNT, 1), "not the key set"),
        ("out-of-range coefficient", lambda pk: _tamper_galois(pk, GALOIS_FIRST_C0, 2**64 - 1), "out of range"),
    ]


BAD_KEYS = _bad_keys()


@pytest.mark.parametrize("build, message", [c[1:] for c in BAD_KEYS], ids=[c[0] for c in BAD_KEYS])
def test_bad_public_keys_are_rejected(server, public_keys, good_ct, build, message):
    bad = build(public_keys)
    with pytest.raises(SealInputError, match=message):
        prepare_keys(bad)
    with pytest.raises(SealInputError, match=message):
        server.predict(good_ct, bad)


def test_native_error_becomes_seal_input_error(server, prepared, good_ct):
    # Bypass validation to reach a native error code: two ciphertexts for a one-ciphertext
    # model is one of the few inputs libeisdk reports (E_INVALIDARG) instead of aborting on.
    raw = raw_of(good_ct) * 2
    cipher = (ctypes.c_byte * len(raw)).from_buffer_copy(raw)
    result = (ctypes.c_byte * server._result_capacity)()
    with pytest.raises(SealInputError, match="0x80070057"):
        server._dot(0, cipher, prepared, result)


def test_server_still_works_after_bad_inputs(client, public_keys, prepared, server, model, digits, good_ct):
    # Same process, same server and key objects as every rejection above.
    raw = raw_of(good_ct)
    for _, build, _ in BAD_CIPHERTEXTS:
        with pytest.raises(SealInputError):
            server.predict(build(good_ct, raw, plain_of(raw)), prepared)
    with pytest.raises(SealInputError):
        server.predict(good_ct, public_keys[:-1])
    x = digits[1][1]
    scores = client.decrypt(server.predict(client.encrypt(x), public_keys))
    np.testing.assert_allclose(scores, model.decision_function(x[None, :])[0], atol=1e-3)
