"""Tests of the fast scheme core (aideploy_scoring.fastlinear), with real SEAL, no mocks."""

from __future__ import annotations

import functools
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aideploy_scoring import fastkernels as fk
from aideploy_scoring import fastlinear as fl
from aideploy_scoring.fastlinear import FastClient, FastParams, FastPublicKey, FastSchemeError, FastServer

TOL = 1e-3


def lr_like(rng: np.random.Generator, n: int, c: int, scale: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Weights shaped like a trained LogisticRegression on [0, 1] pixels (signed, some zeros)."""
    w = rng.normal(0.0, scale, size=(c, n)) * (rng.random((c, n)) < 0.8)
    b = rng.normal(0.0, 0.5, size=c)
    return w, b


@functools.lru_cache(maxsize=None)
def client_for(n: int, c: int) -> FastClient:
    # Key generation is cheap but not free; share clients between tests of one shape.
    return FastClient(n, c)


def setup(n: int, c: int, seed: int = 0, **server_kw):
    rng = np.random.default_rng(seed)
    w, b = lr_like(rng, n, c)
    client = client_for(n, c)
    server = FastServer(w, b, **server_kw)
    public = server.load_public(client.public_bundle())
    return rng, w, b, client, server, public


def roundtrip(client, server, public, X, **kw):
    return client.decrypt(server.predict(client.encrypt(X, **kw), public), X.shape[0])


# ------------------------------------------------------------------- correctness


@pytest.mark.parametrize("n,c", [(64, 10), (784, 10)])
def test_single_query_matches_numpy(n, c):
    rng, w, b, client, server, public = setup(n, c)
    X = rng.random((1, n))
    got = roundtrip(client, server, public, X)
    want = X @ w.T + b
    assert got.shape == (1, c)
    err = np.abs(got - want).max()
    assert err <= TOL
    assert err <= server.error_bound


@pytest.mark.parametrize("n,c", [(64, 10), (784, 10)])
def test_signed_inputs_and_extremes(n, c):
    rng, w, b, client, server, public = setup(n, c, seed=1)
    X = np.vstack([rng.uniform(-1, 1, n), np.ones(n), -np.ones(n), np.zeros(n)])
    got = roundtrip(client, server, public, X, layout="row")
    assert np.abs(got - (X @ w.T + b)).max() <= TOL


def test_binary_one_dimensional_coef():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.2, 30)
    client = FastClient(30, 1)
    server = FastServer(w, 0.75)
    public = server.load_public(client.public_bundle())
    X = rng.random((3, 30))
    got = roundtrip(client, server, public, X)
    assert got.shape == (3, 1)
    assert np.abs(got[:, 0] - (X @ w + 0.75)).max() <= TOL


def test_intercept_scalar_broadcast_and_shape_errors():
    w = np.full((3, 5), 0.1)
    server = FastServer(w, 0.5)
    client = FastClient(5, 3)
    public = server.load_public(client.public_bundle())
    X = np.full((1, 5), 0.5)
    assert np.allclose(roundtrip(client, server, public, X), 0.75, atol=TOL)
    with pytest.raises(FastSchemeError):
        FastServer(w, np.zeros(2))
    with pytest.raises(FastSchemeError):
        FastServer(np.zeros((2, 3, 4)), 0.0)


def test_batch_column_layout():
    rng = np.random.default_rng(3)
    w, b = lr_like(rng, 64, 10)
    params = fl.choose_params(w, b, max_error=1e-2)  # a flood that covers a batch of two blocks
    server = FastServer(w, b, params)
    client = FastClient(64, 10, params)
    public = server.load_public(client.public_bundle())
    X = rng.random((4096 + 37, 64))  # two blocks, the second partial
    assert server.max_samples >= len(X)
    got = client.decrypt(server.predict(client.encrypt(X, layout="column"), public), X.shape[0])
    assert np.abs(got - (X @ w.T + b)).max() <= server.error_bound


def test_batch_row_layout_and_auto_choice():
    rng, w, b, client, server, public = setup(784, 10, seed=4)
    X = rng.random((3, 784))
    q = client.encrypt(X)  # 3 samples: one ciphertext each is cheaper than 784 columns
    assert q[5] == 1  # row layout
    assert np.abs(client.decrypt(server.predict(q, public), 3) - (X @ w.T + b)).max() <= TOL
    small = client_for(8, 2)
    assert client_for(8, 2).encrypt(np.zeros((100, 8)))[5] == 2  # column layout wins
    del small
    # A batch of 64 digits-sized samples: as many ciphertexts up either way, but the column
    # layout answers with 10 ciphertexts instead of 64 (the response counts too).
    assert client_for(64, 10).encrypt(np.zeros((64, 64)))[5] == 2
    assert client_for(64, 10).encrypt(np.zeros((1, 64)))[5] == 1
    assert client.encrypt(np.zeros((64, 784)))[5] == 1  # 784 features: row is still smaller


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=120),
    c=st.integers(min_value=1, max_value=12),
    samples=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    w_scale=st.floats(min_value=0.0, max_value=1.0),
    x_lo=st.sampled_from([-1.0, 0.0]),
)
def test_property_roundtrip(n, c, samples, seed, w_scale, x_lo):
    """Any model with |w| <= 1, |b| <= 5, n <= 120 and inputs in [-1, 1] decrypts within 1e-3."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-w_scale, w_scale, (c, n))
    b = rng.uniform(-5, 5, c)
    X = rng.uniform(x_lo, 1.0, (samples, n))
    client = client_for(n, c)
    server = FastServer(w, b)
    public = server.load_public(client.public_bundle())
    layout = "row" if seed % 2 else "column"
    got = roundtrip(client, server, public, X, layout=layout)
    err = np.abs(got - (X @ w.T + b)).max()
    assert err <= server.error_bound <= TOL


# ----------------------------------------------------------------- range checks


def test_out_of_range_inputs_raise():
    _, _, _, client, _, _ = setup(64, 10)
    with pytest.raises(FastSchemeError, match="outside the supported range"):
        client.encrypt(np.full((1, 64), 1.01))
    with pytest.raises(FastSchemeError, match="NaN"):
        client.encrypt(np.full((1, 64), np.nan))
    with pytest.raises(FastSchemeError, match="features"):
        client.encrypt(np.zeros((1, 63)))
    with pytest.raises(FastSchemeError):
        client.encrypt(np.zeros((2, 2, 64)))
    with pytest.raises(FastSchemeError):
        client.encrypt(np.zeros((1, 64)), layout="diagonal")
    assert issubclass(FastSchemeError, ValueError)


def test_wider_input_range_is_configurable():
    params = FastParams(x_bound=16.0)
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, (10, 64))
    client = FastClient(64, 10, params)
    server = FastServer(w, np.zeros(10), params)
    public = server.load_public(client.public_bundle())
    X = rng.uniform(0, 16, (2, 64))
    assert np.abs(roundtrip(client, server, public, X) - X @ w.T).max() <= TOL


def test_model_outside_supported_range_raises():
    with pytest.raises(FastSchemeError, match="logits can reach"):
        FastServer(np.full((2, 100), 2.0), 0.0)  # x_bound*||w||_1 = 200 > 128
    with pytest.raises(FastSchemeError, match="NaN"):
        FastServer(np.array([[np.nan, 1.0]]), 0.0)
    with pytest.raises(FastSchemeError, match="features"):
        FastServer(np.zeros((1, 5000)), 0.0)


def test_invalid_params_raise():
    for bad in (dict(poly_modulus_degree=1000), dict(coeff_modulus_bits=(60, 60, 60)),
                dict(x_bound=0.0), dict(max_error=-1.0), dict(plain_modulus_bits=70)):
        with pytest.raises(FastSchemeError):
            FastParams(**bad)
    with pytest.raises(FastSchemeError):
        FastParams.from_json(b"{not json")
    with pytest.raises(FastSchemeError):
        FastParams.from_json(b'{"poly_modulus_degree": 4096}')
    p = FastParams()
    assert FastParams.from_json(p.to_json()) == p
    d = p.describe()
    assert d["poly_modulus_degree"] == 4096 and 95 < d["log2_q"] <= 96 and "128-bit" in d["security"]
    assert 108 < FastParams(coeff_modulus_bits=fl.RINGS[1]).describe()["log2_q"] <= 109
    with pytest.raises(FastSchemeError, match="128-bit"):  # SEAL's check: over 109 bits at N = 4096
        fl._context(FastParams(coeff_modulus_bits=(32, 32, 32, 20)))


# ------------------------------------------------------- untrusted bytes: queries


@pytest.fixture(scope="module")
def env64():
    return setup(64, 10, seed=6)


def _expect_rejected(server, public, blob):
    with pytest.raises(FastSchemeError):
        server.predict(blob, public)


def test_tampered_queries_raise(env64):
    rng, w, b, client, server, public = env64
    q = client.encrypt(rng.random((1, 64)))
    server.predict(q, public)  # sanity: the untampered query works
    hdr = fl._QUERY_HEADER.size
    cases = {
        "empty": b"",
        "truncated header": q[:20],
        "truncated body": q[:-4],
        "padded": q + b"\0\0\0\0",
        "garbage": bytes(rng.integers(0, 256, len(q), dtype=np.uint8)),
        "magic": b"XXXX" + q[4:],
        "version": q[:4] + b"\x09" + q[5:],
        "layout": q[:5] + b"\x07" + q[6:],
        "flags": q[:6] + b"\x80\x00" + q[8:],
        "params fingerprint": q[:8] + bytes(8) + q[16:],
        "key id": q[:16] + bytes(16) + q[32:],
        "n_features": q[:32] + struct.pack("<I", 65) + q[36:],
        "n_samples": q[:36] + struct.pack("<I", 0) + q[40:],
        "n_cts": q[:40] + struct.pack("<I", 2) + q[44:],
        "huge n_cts": q[:36] + struct.pack("<II", 10**9, 10**9) + q[44:],
        "coefficient >= q": q[:hdr] + b"\xff\xff\xff\xff" + q[hdr + 4:],
    }
    for name, blob in cases.items():
        with pytest.raises(FastSchemeError):
            server.predict(blob, public)
    for bad in (None, "text", 12345, [1, 2]):
        with pytest.raises(FastSchemeError):
            server.predict(bad, public)
    with pytest.raises(FastSchemeError):
        server.predict(q, "not a key")


def test_query_for_wrong_key_or_model_raises(env64):
    rng, w, b, client, server, public = env64
    other = FastClient(64, 10)
    with pytest.raises(FastSchemeError, match="key"):
        server.predict(other.encrypt(rng.random((1, 64))), public)
    narrow = client_for(32, 10)
    with pytest.raises(FastSchemeError):
        server.predict(narrow.encrypt(rng.random((1, 32))), public)


def test_query_for_other_parameters_raises(env64):
    rng, w, b, client, server, public = env64
    other_params = FastParams(x_bound=2.0)
    other = FastClient(64, 10, other_params)
    with pytest.raises(FastSchemeError, match="parameters"):
        server.load_public(other.public_bundle())
    q = other.encrypt(rng.random((1, 64)))
    with pytest.raises(FastSchemeError):
        server.predict(q, public)


# ------------------------------------------------------ untrusted bytes: bundles


def test_tampered_bundles_raise(env64):
    rng, w, b, client, server, public = env64
    bundle = client.public_bundle()
    plen = struct.unpack_from("<I", bundle, 8)[0]
    pk_off = 12 + plen
    cases = [
        b"", bundle[:10], bundle[:-1], bundle + b"\0", b"XXXX" + bundle[4:],
        bundle[:4] + bytes([fl.WIRE_VERSION + 1]) + bundle[5:],
        bundle[:8] + struct.pack("<I", 10**6) + bundle[12:],
        bundle[:12] + b"[" + bundle[13:],
        bundle[:pk_off + 32] + b"\xff\xff\xff\xff" + bundle[pk_off + 36:],  # pk0 follows the 32-byte key seed
        bytes(rng.integers(0, 256, len(bundle), dtype=np.uint8)),
    ]
    for blob in cases:
        with pytest.raises(FastSchemeError):
            server.load_public(blob)
    with pytest.raises(FastSchemeError):
        server.load_public(None)


def test_bundle_contents_and_key_id(env64):
    rng, w, b, client, server, public = env64
    bundle = client.public_bundle()
    assert len(bundle) <= 256_000
    assert public.key_id == client.key_id
    assert client.key_id == FastServer(w, b).load_public(bundle).key_id  # stable, derived from the bundle
    assert FastClient(64, 10).key_id != client.key_id
    # no secret key material in the bundle or the repr
    s = client._s_ntt
    assert s.astype("<u4").tobytes()[:64] not in bundle
    assert s.astype("<u8").tobytes()[:64] not in bundle
    text = repr(client)
    assert "secret" not in text.lower()
    for v in s.reshape(-1)[:200]:
        assert str(int(v)) not in text
    assert client.key_id in text


# ------------------------------------------------------- responses and privacy


def test_response_tampering_detected_by_client(env64):
    rng, w, b, client, server, public = env64
    r = server.predict(client.encrypt(rng.random((1, 64))), public)
    client.decrypt(r, 1)
    for blob in (r[:-4], b"XXXX" + r[4:], r + b"\0\0\0\0", b""):
        with pytest.raises(FastSchemeError):
            client.decrypt(blob, 1)
    with pytest.raises(FastSchemeError, match="samples"):
        client.decrypt(r, 2)
    with pytest.raises(FastSchemeError, match="different key"):
        FastClient(64, 10).decrypt(r, 1)


def test_sizes_within_targets():
    rng, w, b, client, server, public = setup(784, 10)
    q = client.encrypt(rng.random((1, 784)))
    r = server.predict(q, public)
    assert len(q) <= 50_000
    assert len(r) <= 100_000
    assert len(client.public_bundle()) <= 50_000
    # the query is half a ciphertext: c0 only, plus a 32-byte seed; the bundle pk0 and a key seed
    n = FastParams().poly_modulus_degree
    assert len(q) == fl._QUERY_HEADER.size + 3 * n * 4
    assert len(client.public_bundle()) == 12 + len(FastParams().to_json()) + 32 + 3 * n * 4


def _to_output(ctx, params) -> float:
    """Phase units -> output units: ``1 / (Delta * S)``."""
    return 1.0 / (float(ctx.delta) * params.x_scale * params.w_scale)


def _phases(client, response):
    """Decrypt every coefficient of every output ciphertext, using 0 for unsent c0 values."""
    ctx = client._ctx
    n, L = ctx.n, len(ctx.primes)
    body = response[fl._RESPONSE_HEADER.size:]
    n_cts = struct.unpack_from("<I", response, fl._RESPONSE_HEADER.size - 4)[0]
    c1 = np.frombuffer(body, dtype="<u4", count=n_cts * L * n).reshape(n_cts, L, n)
    cs = ctx.times_secret(c1, client._s_ntt)
    return ctx.centered_fraction(cs) * float(ctx.q) * _to_output(ctx, client.params)


def exact_centered(ctx, r: np.ndarray) -> np.ndarray:
    """The integers in (-q/2, q/2] with residues ``r[..., j, :]`` (Python integers: exact where
    the client's float64 reading is not, for phases far below q)."""
    r = np.asarray(r).astype(object)
    x = 0
    for j, q in enumerate(ctx.primes):
        m = ctx.q // q
        x = x + r[..., j, :] * m * pow(m, -1, q)
    x = x % ctx.q
    return np.where(x > ctx.q // 2, x - ctx.q, x)


def _divide_by_a(c1_mod_q1: np.ndarray, a_mod_q1: np.ndarray, q1: int, count: int = 64) -> list[int]:
    """c1 / a pointwise in the NTT domain (first ``count`` slots): W's NTT if c1 = a.W."""
    return [int(c) * pow(int(v), -1, q1) % q1 for c, v in zip(c1_mod_q1[:count], a_mod_q1[:count])]


def test_response_reveals_only_logits(env64):
    rng, w, b, client, server, public = env64
    x = rng.random((1, 64))
    r = server.predict(client.encrypt(x), public)
    n = client._ctx.n
    # 1) structure: full c1' but only the 10 logit coefficients of c0'
    assert len(r) == fl._RESPONSE_HEADER.size + 4 * 3 * (n + 10)
    # 2) "decrypting" the other coefficients gives uniform noise over the whole range,
    #    not the partial sums of W carried by the raw product
    vals = _phases(client, r)[0]
    logit_pos = [c * 64 + 63 for c in range(10)]
    other = np.delete(vals, logit_pos)
    bound = float(client._ctx.q) / 2 * _to_output(client._ctx, client.params)  # ~t/(2S) = 128
    hist, _ = np.histogram(other, bins=16, range=(-bound, bound))
    expected = other.size / 16
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 60  # 15 dof: p < 1e-6 for a uniform sample to exceed this
    # partial sums the raw product x*W would carry (class c reversed at offset 64c)
    poly = np.concatenate([np.rint(w[c, ::-1] * client.params.w_scale) for c in range(10)])
    prod = np.convolve(np.rint(x[0] * client.params.x_scale), poly)
    partial = np.zeros(n)
    partial[: prod.size] = prod / (client.params.x_scale * client.params.w_scale)
    support = [j for j in range(prod.size) if j not in logit_pos]
    assert np.abs(partial[support]).max() > 0.1  # there is something to hide
    assert abs(np.corrcoef(vals[support], partial[support])[0, 1]) < 0.2
    # 3) c1' is re-randomised: dividing by the client's a does not give W back
    q = client.encrypt(x)
    r = server.predict(q, public)
    _, _, _, a = server._parse_query(q, public)
    c1 = np.frombuffer(r, dtype="<u4", count=n, offset=fl._RESPONSE_HEADER.size)
    recovered = _divide_by_a(c1, a[0, 0], client._ctx.primes[0])
    assert sum(x == int(y) for x, y in zip(recovered, server._w_ntt[0][0, :64])) <= 1


def test_privacy_checks_have_power(env64):
    """Control: without re-randomisation the same statistics expose the partial sums."""
    rng, w, b, client, server, public = env64
    x = rng.random((1, 64))
    q = client.encrypt(x)
    _, _, c0, a = server._parse_query(q, public)
    ctx = server._ctx
    w_ntt = server._w_ntt[0]
    raw_c1 = (a.astype(np.uint64) * w_ntt) % ctx.q_col  # the product, no Enc(0) added
    cs = ctx.times_secret(raw_c1, client._s_ntt)
    c0w = ctx.intt((ctx.ntt(c0) * w_ntt) % ctx.q_col)  # c0*W, all coefficients
    phase = (c0w + cs) % ctx.q_col
    vals = ctx.centered_fraction(phase)[0] * float(ctx.q) * _to_output(ctx, client.params)
    logit_pos = [c * 64 + 63 for c in range(10)]
    assert np.abs(vals[logit_pos] - (x @ w.T)[0]).max() < 1e-3
    other = np.delete(vals, logit_pos)
    assert np.abs(other).max() < 10  # the partial sums, in the clear: what the checks must rule out
    # and c1 = a.W alone reveals W to anyone who knows a (the client does)
    assert _divide_by_a(raw_c1[0, 0], a[0, 0], ctx.primes[0]) == [int(v) for v in w_ntt[0, :64]]


def test_rerandomised_and_flooded(env64):
    rng, w, b, client, server, public = env64
    x = rng.random((1, 64))
    q = client.encrypt(x)
    r1, r2 = server.predict(q, public), server.predict(q, public)
    hdr = fl._RESPONSE_HEADER.size
    assert r1[hdr:hdr + 64] != r2[hdr:hdr + 64]  # fresh encryption of zero each time
    _, _, _, a = server._parse_query(q, public)
    raw = ((a.astype(np.uint64) * server._w_ntt[0]) % server._ctx.q_col).astype("<u4").tobytes()
    assert r1[hdr:hdr + len(raw)] != raw
    # flooding: repeated evaluations of one query spread over ~[-F, F] around the logit
    xh = np.rint(x[0] * client.params.x_scale)
    wh = np.rint(w * client.params.w_scale)
    exact = (xh @ wh.T + np.rint(b * client.params.x_scale * client.params.w_scale)) / (
        client.params.x_scale * client.params.w_scale)
    errs = np.array([client.decrypt(server.predict(q, public), 1)[0] - exact for _ in range(20)]).reshape(-1)
    flood = 2.0 ** server.describe()["flood_bits"] * _to_output(client._ctx, client.params)
    assert np.abs(errs).max() <= server.error_bound
    assert 0.3 * flood < errs.std() < 1.0 * flood  # uniform on [-F, F): std = F/sqrt(3)


def test_encryptions_of_zero_are_fresh_and_decrypt_to_bounded_noise(env64):
    """The server's re-randomisers: each a distinct public-key encryption of zero whose phase
    under the client's secret key stays within the bound the error guarantee assumes."""
    rng, w, b, client, server, public = env64
    ctx = client._ctx
    z = public.zeros(3)  # (3, [z0 coefficients, z1 tiled NTT], L primes, N)
    assert len({zz.tobytes() for zz in z}) == 3
    for z0, z1 in z:
        cs = ctx.times_secret(z1[None], client._s_ntt)[0]
        phase = exact_centered(ctx, (z0 + cs) % ctx.q_col).astype(np.float64)
        assert 0 < np.abs(phase).max() <= fl._pk_noise_bound(ctx.n)
        assert np.abs(phase).std() > 10  # noise, not an all-zero (transparent) ciphertext
    assert isinstance(public, FastPublicKey) and "key_id" in repr(public)


def _seal_ntt(ctx, v: np.ndarray) -> np.ndarray:
    """SEAL's own NTT (its order) of ``v`` modulo the primes of SEAL's data level (all but the
    last), through a ciphertext SEAL loads from its serialisation and transforms."""
    import seal

    context = ctx.ring.seal
    first = context.first_context_data()
    L, n = len(first.parms().coeff_modulus()), ctx.n
    major, minor = seal.Plaintext("1").to_bytes()[3:5]

    def header(total: int) -> bytes:
        return struct.pack("<HBBBBHQ", 0xA15E, 16, major, minor, 0, 0, total)

    polys = np.ones((2, L, n), dtype="<u8")  # SEAL refuses a ciphertext whose second polynomial is 0
    polys[0] = v[:L]
    data = polys.tobytes()
    members = (struct.pack("<4Q", *first.parms_id()) + b"\0" + struct.pack("<QQQdQ", 2, n, L, 1.0, 1)
               + header(24 + len(data)) + struct.pack("<Q", len(data) // 8) + data)
    ct = seal.Ciphertext()
    ct.load_bytes(context, header(16 + len(members)) + members)
    seal.Evaluator(context).transform_to_ntt_inplace(ct)
    raw = ct.to_string()
    return np.frombuffer(raw, dtype="<u8", count=2 * L * n, offset=len(raw) - 16 * L * n).reshape(2, L, n)[0]


@pytest.mark.parametrize("n, ring", [(4096, fl.RINGS[0]), (4096, fl.RINGS[1]), (8192, fl.RINGS[0])])
def test_ntt_matches_seal_and_inverts(n, ring):
    """Our compiled NTT must be SEAL's (the client reads SEAL's secret key in NTT form) up to
    the documented tiled order, and the inverse must undo it: checked against SEAL's transform
    on its data level, and on every prime by SEAL's secret key, which must come out as the same
    ternary polynomial modulo each."""
    ctx = fl._context(fl.FastParams(poly_modulus_degree=n, coeff_modulus_bits=ring))
    tables = ctx.tables
    rng = np.random.default_rng(5)
    v = np.stack([rng.integers(0, q, ctx.n, dtype=np.uint64) for q in ctx.primes])
    ref = _seal_ntt(ctx, v)
    for j, q in enumerate(ctx.primes):
        out = np.empty(ctx.n, dtype=np.uint64)
        fk.ntt_forward(v[j].copy(), out, q, tables.big[j], tables.tail[j])
        if j < len(ref):
            assert np.array_equal(fk.to_seal_order(out), ref[j])
            assert np.array_equal(fk.from_seal_order(ref[j]), out)
        back = np.empty(ctx.n, dtype=np.uint64)
        fk.ntt_inverse(out, back, q, tables.big[j], tables.tail[j], tables.n_inv[j])
        assert np.array_equal(back, v[j])
    client = FastClient(8, 2, ctx.params)
    s = ctx.intt(client._s_ntt[None])[0].astype(np.int64)
    s = np.where(s > ctx.q_col.astype(np.int64) // 2, s - ctx.q_col.astype(np.int64), s)
    assert set(np.unique(s)) == {-1, 0, 1} and (s == s[0]).all()


def _expand_reference(words: np.ndarray, primes, masks, n: int) -> np.ndarray | None:
    """fastkernels.expand_uniform's documented rule, written plainly (None: spares ran out)."""
    L = len(primes)
    out = words[: L * n].reshape(L, n) & np.asarray(masks, dtype=np.uint32).reshape(L, 1)
    spare = iter(words[L * n:])
    for j, c in np.argwhere(out >= np.asarray(primes, dtype=np.uint32).reshape(L, 1)):  # (j, c) order
        for w in spare:
            if w & masks[j] < primes[j]:
                out[j, c] = w & masks[j]
                break
        else:
            return None
    return out


def test_expand_a_follows_the_documented_rule():
    """Reference implementation of expand_a's docstring, over enough ciphertexts to see rejections."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ctx = fl._context(FastParams())
    rejected = 0
    for i in range(16):
        seed = bytes([i]) * 32
        key = hashlib.sha256(fl._DOMAIN_A + seed).digest()[:16]
        got = ctx.expand_a(seed, 4)
        for ct in range(4):
            counter = ct.to_bytes(12, "little") + (2).to_bytes(4, "big")
            stream = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(bytes(4 * ctx.stream_words))
            words = np.frombuffer(stream, dtype="<u4")
            rejected += int((words[: 3 * ctx.n].reshape(3, -1) >= ctx.primes_u32.reshape(3, 1)).sum())
            assert np.array_equal(got[ct], _expand_reference(words, ctx.primes, ctx.prime_masks, ctx.n))
    assert rejected  # the spare words were used too


@pytest.mark.parametrize("primes", [(4294483969, 4294729729, 4294737921), (1 << 31, 3 << 29, 1 << 30),
                                    (1 << 20, 5 << 18, 3 << 19, 7 << 17)])
def test_rejection_sampling_takes_spare_words_in_order(primes):
    """``a`` is defined by this rule on both sides; pin it, with heavy rejection and a short stream."""
    rng = np.random.default_rng(7)
    n, L = 512, len(primes)
    masks = np.array([(1 << q.bit_length()) - 1 for q in primes], dtype=np.uint32)
    # masks of 32 bits make a prime of 2^20 reject ~all words: the rule must still hold
    for mask in (masks, np.full(L, 0xFFFFFFFF, dtype=np.uint32)):
        for length in (L * n, L * n + 40, L * n + 4000):
            words = rng.integers(0, 1 << 32, length, dtype=np.uint32)
            out = np.zeros((L, n), dtype=np.uint32)
            ok = fk.expand_uniform(words, np.array(primes, dtype=np.uint32), mask, out)
            expect = _expand_reference(words, primes, mask, n)
            assert ok == (expect is not None)
            if ok:
                assert np.array_equal(out, expect)
                assert (out < np.array(primes, dtype=np.uint32).reshape(L, 1)).all()


@pytest.mark.parametrize("nwords", [1, 7, 4096, 100_003])
def test_seed_expansion_is_the_documented_aes_ctr_keystream(nwords):
    """Client and server share the expansion, so a bug in it would still round-trip: pin it."""
    import os

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce = os.urandom(16), os.urandom(12)
    reference = Cipher(algorithms.AES(key), modes.CTR(nonce + (2).to_bytes(4, "big"))).encryptor()
    expect = np.frombuffer(reference.update(bytes(4 * nwords)), dtype="<u4")
    assert np.array_equal(fl._aes_words(AESGCM(key), nonce, nwords), expect)


def test_noise_words_are_fresh_across_calls_and_long_requests(monkeypatch):
    """Each call reads a new stream (its own nonce); requests longer than one AES call are split."""
    monkeypatch.setattr(fl, "_NOISE_CALL_WORDS", 1000)
    stream = fl._NoiseStream()
    a, b = stream.words(2500), stream.words(2500)
    assert a.shape == b.shape == (2500,) and a.dtype == np.uint64
    chunks = np.concatenate([a, b]).reshape(-1, 500)  # no two 500-word pieces alike
    assert len({c.tobytes() for c in chunks}) == len(chunks)
    assert stream.words(0).shape == (0,)


@pytest.mark.parametrize("ring", fl.RINGS)
def test_bias_phases_match_python_integers(ring):
    """Delta * bh mod q_j, for intercepts up to 2^62 of either sign, against Python's integers."""
    ctx = fl._context(FastParams(coeff_modulus_bits=ring))
    rng = np.random.default_rng(len(ring))
    bh = np.concatenate([rng.integers(-2**62, 2**62, 500), rng.integers(-600, 600, 500),
                         [0, 1, -1, 2**62 - 1, -(2**62 - 1)]]).astype(np.int64)
    out = np.empty((bh.size, len(ring)), dtype=np.int64)
    fk.bias_phases(bh, ctx.delta_mod, ctx.primes_u64, out)
    assert out.tolist() == [[ctx.delta * int(v) % qj for qj in ctx.primes] for v in bh]


def test_row_plaintexts_without_companions_score_alike():
    """Weights made for one request (no Shoup companions: the kernel takes the query's ``a``'s)
    give the same response bytes, up to the fresh noise, as the precomputed ones: decrypted
    logits agree within the error bound."""
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(10, 784)) * 0.05, rng.normal(size=10)
    server = FastServer(W, b)
    client = FastClient(784, 10, server.params)
    public = server.load_public(client.public_bundle())
    once = fl._Weights(server._ctx, server._weights.wh.copy(), np.rint(b * server.params.x_scale
                       * server.params.w_scale).astype(np.int64), len(server._groups[0]), scratch=True)
    assert once.row()[1].shape[0] == 0
    X = rng.uniform(-1, 1, (3, 784))
    query = client.encrypt(X, layout="row")
    a = client.decrypt(server.predict(query, public), 3)
    c = client.decrypt(server.predict(query, public, once), 3)
    assert np.abs(a - c).max() <= 2 * server.error_bound
    assert np.abs(c - (X @ W.T + b)).max() <= server.error_bound


@pytest.mark.parametrize("w_bits", [8, 26, 30])
def test_column_outputs_are_exact_at_the_overflow_limit(w_bits):
    """The batch kernel's int64 partial sums, with the largest weights its fold allows.

    Class 0 has every weight at -2^w_bits against residues 0 (centred to -2^31): each partial
    sum is then the largest the fold permits.  Checked against Python integers."""
    ctx = fl._context(FastParams())
    rng = np.random.default_rng(w_bits)
    nf, n_classes, n = 37, 3, 512
    top = 1 << w_bits
    w = rng.integers(-top, top, (n_classes, nf), dtype=np.int64)
    w[0] = -top
    w[1] = top - 1
    ct = np.stack([rng.integers(0, q, (nf, n), dtype=np.uint32) for q in ctx.primes], axis=1)
    ct[:, :, :128] = 0
    for j, q in enumerate(ctx.primes):
        ct[:, j, 128:256] = q - 1
    z = np.stack([rng.integers(0, q, (n_classes, n), dtype=np.uint64) for q in ctx.primes], axis=1)
    fold = ((1 << 63) - 1) // (top << 31)
    out = np.empty((n_classes, len(ctx.primes), n), dtype=np.uint32)
    fk.column_outputs(ct, w.astype(np.int32), fold, ctx.primes_u64, z, out, n)
    part = np.full_like(out, 7)
    fk.column_outputs(ct, w.astype(np.int32), fold, ctx.primes_u64, z, part, 256)  # a partial block's c0
    for j, q in enumerate(ctx.primes):
        expect = (w.astype(object) @ ct[:, j, :].astype(object) + z[:, j, :].astype(object)) % q
        assert np.array_equal(out[:, j, :].astype(object), expect)
    assert np.array_equal(part[:, :, :256], out[:, :, :256]) and (part[:, :, 256:] == 7).all()
