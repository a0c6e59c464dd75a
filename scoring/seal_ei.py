"""Server side of SEAL encrypted linear inference (``encrypted-inference==0.9``).

A drop-in for ``EIServer(coef, intercept).predict(ciphertexts, public_keys)``: the same
native computation (``ComputeDotProduct`` in libeisdk, Microsoft SEAL 3.5, CKKS) giving the
same result bytes, with two differences:

* Speed. ``EIServer`` copies the ~9 MB public-key blob into a ctypes array element by
  element, once per class (~0.85 s each, about 90% of its time). Here the key goes into a
  native buffer once (`prepare_keys`, a few ms), which a caller may cache and reuse.
* Safety. libeisdk turns hardly any C++ exception into an error code: a corrupt ciphertext
  or key, a bad scale, or an out-of-range coefficient makes it call ``std::terminate`` and
  abort the whole process. So everything from the network is checked here, down to
  the SEAL serialisation, before native code sees it. Bad input raises `SealInputError`.

Imports nothing from the ``aideploy`` package: this module runs inside the scoring container.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import hashlib
import json
import os
import struct
import threading
import zlib

import numpy as np
from encrypted.inference.internal import einative, eiutils

__all__ = ["SealInputError", "PreparedKeys", "prepare_keys", "SealLinearServer"]

_native = einative._einative


class SealInputError(ValueError):
    """Encrypted input (ciphertexts or public keys) was malformed and was not passed to native code."""


# --- SEAL 3.5 serialisation, as written by libeisdk's client ----------------------------------

# Every SEAL object starts with: magic 0xA15E, header size 16, version 3.5, compression mode,
# two reserved bytes and the object's total size in bytes, header included.
_HEADER = struct.Struct("<HBBBBHQ")
_MAGIC, _VERSION = 0xA15E, (3, 5)
_COMPR_NONE, _COMPR_DEFLATE = 0, 1  # SEAL 3.5 knows no other modes
_SEED_BYTES = 64  # seeded ciphertexts store c0 and the PRNG seed c1 is expanded from
_CKKS = 2

# Weights and intercepts are encoded by the native code; far beyond this bound its encoder
# throws (an intercept near 2**59 aborts the process). Real linear models are far below it.
_MAX_ABS_PARAMETER = 2.0**40
# A coefficient row that encodes to the zero plaintext also aborts the process ("encrypteds
# cannot be empty"). With weights encoded at scale 2**40 and degree 8192, a slot vector of L2
# norm r has a coefficient of at least 2**40 * r * sqrt(2) / 8192 ~ 1.9e8 * r, so above 1e-8
# at least one coefficient rounds to a non-zero integer. (Measured: a lone weight of 1e-9
# aborts, 3e-9 does not, as this predicts.)
_MIN_CHUNK_NORM = 1e-8


def _header(mode: int, size: int) -> bytes:
    return _HEADER.pack(_MAGIC, _HEADER.size, *_VERSION, mode, 0, size)


def _deflate_bound(n: int) -> int:
    """zlib's compressBound: the most deflate can expand n bytes."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin; these bases are exact for n < 3.3e24 (moduli are <= 61 bits)."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % p == 0 for p in bases):
        return n in bases
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _coeff_modulus(degree: int, bit_sizes: list[int]) -> list[int]:
    """SEAL 3.5 ``CoeffModulus::Create``: for each bit size the largest primes = 1 mod 2*degree,
    handed out smallest first. Checked indirectly: `_parms_id` of these must match real data."""
    step, table = 2 * degree, {}
    for bits in set(bit_sizes):
        primes, value = [], (1 << bits) - step + 1
        while len(primes) < bit_sizes.count(bits) and value > 1 << (bits - 1):
            if _is_prime(value):
                primes.append(value)
            value -= step
        table[bits] = primes
    return [table[bits].pop() for bits in bit_sizes]


def _parms_id(degree: int, moduli: list[int]) -> bytes:
    """SEAL 3.5 ``compute_parms_id``: BLAKE2b-256 of scheme, degree, moduli, plain modulus (0)."""
    words = [_CKKS, degree, *moduli, 0]
    return hashlib.blake2b(struct.pack(f"<{len(words)}Q", *words), digest_size=32).digest()


class _SeededCiphertext:
    """Layout of a SEAL 3.5 ciphertext saved in seeded form at one parameter level."""

    def __init__(self, degree: int, moduli: list[int], scale: float):
        words = len(moduli) * degree
        self.prefix = (
            _parms_id(degree, moduli)
            + b"\x01"  # is_ntt_form
            + struct.pack("<QQQd", 2, degree, len(moduli), scale)  # size, degree, RNS primes, scale
            + _header(_COMPR_NONE, _HEADER.size + 8 + 8 * words)  # c0 as a nested IntArray...
            + struct.pack("<Q", words)  # ...with its word count
        )
        self.size = len(self.prefix) + 8 * words + _SEED_BYTES
        self._moduli = np.array(moduli, dtype=np.uint64)[:, None]
        self._shape = (len(moduli), degree)

    def check(self, plain: bytes, offset: int, what: str) -> None:
        """Raise unless plain[offset:] starts with a ciphertext SEAL's ``load`` will accept."""
        if plain[offset : offset + len(self.prefix)] != self.prefix:
            raise SealInputError(f"{what}: metadata (parameters, level, scale) do not match the server's")
        start = offset + len(self.prefix)
        c0 = np.frombuffer(plain, dtype="<u8", count=self._shape[0] * self._shape[1], offset=start)
        if (c0.reshape(self._shape) >= self._moduli).any():
            raise SealInputError(f"{what}: a coefficient is out of range of its modulus")


def _read_object(data: bytes, offset: int, plain_size: int, what: str) -> tuple[bytes, int]:
    """Check the SEAL object at data[offset:] and return (its decompressed members, end offset)."""
    if len(data) - offset < _HEADER.size:
        raise SealInputError(f"{what}: truncated ({len(data) - offset} bytes)")
    magic, header_size, major, minor, mode, reserved, size = _HEADER.unpack_from(data, offset)
    if magic != _MAGIC or header_size != _HEADER.size or reserved:
        raise SealInputError(f"{what}: not a SEAL object (bad header)")
    if (major, minor) != _VERSION:
        raise SealInputError(f"{what}: SEAL version {major}.{minor}, expected {_VERSION[0]}.{_VERSION[1]}")
    if mode not in (_COMPR_NONE, _COMPR_DEFLATE):
        raise SealInputError(f"{what}: unknown compression mode {mode}")
    available, largest = len(data) - offset, _HEADER.size + _deflate_bound(plain_size)
    if not _HEADER.size < size <= min(available, largest):
        raise SealInputError(f"{what}: header says {size} bytes; {available} available, {largest} at most")
    body = data[offset + _HEADER.size : offset + size]
    if mode == _COMPR_NONE:
        plain = body
    else:
        inflater = zlib.decompressobj()
        try:
            plain = inflater.decompress(body, plain_size + 1)  # the cap defuses zip bombs
        except zlib.error as exc:
            raise SealInputError(f"{what}: corrupt compressed data ({exc})") from None
        if len(plain) > plain_size:
            raise SealInputError(f"{what}: more than the expected {plain_size} bytes of content")
        if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise SealInputError(f"{what}: compressed data is truncated or has trailing bytes")
    if len(plain) != plain_size:
        raise SealInputError(f"{what}: {len(plain)} bytes of content, expected {plain_size}")
    return plain, offset + size


class _Layout:
    """What libeisdk's client sends for the parameters in the package's parameters.json."""

    def __init__(self) -> None:
        with open(os.path.join(os.path.dirname(einative.__file__), "parameters.json")) as f:
            params = json.load(f)
        degree = params["PolyModulusDegree"]
        key_moduli = _coeff_modulus(degree, params["CoeffModulus"])
        # Keys live at the top level; data one level down, without the special prime.
        self.ciphertext = _SeededCiphertext(degree, key_moduli[:-1], float(params["InitialScale"]))
        self.public_key = _SeededCiphertext(degree, key_moduli, 1.0)
        self.key_parms_id = _parms_id(degree, key_moduli)
        self.key_header = _header(_COMPR_NONE, _HEADER.size + self.public_key.size)
        self.decomposition = len(key_moduli) - 1  # key-switching keys per filled slot
        # GaloisKeys has one slot per odd Galois element (index elt >> 1); the client fills
        # those for rotations by 1, 2, 4, ... slots/2. RelinKeys has a single slot.
        rotations = (degree // 2).bit_length() - 1
        galois_slots = {pow(3, 1 << i, 2 * degree) >> 1 for i in range(rotations)}
        self.kswitch = {"Galois keys": (degree, galois_slots), "relinearisation keys": (1, {0})}

    def kswitch_size(self, dim: int, filled: set[int]) -> int:
        keys = len(filled) * self.decomposition
        return 32 + 8 + 8 * dim + keys * (_HEADER.size + self.public_key.size)

    def check_kswitch(self, plain: bytes, dim: int, filled: set[int], what: str) -> None:
        """Walk SEAL 3.5 KSwitchKeys: parms_id, slot count, then per slot a count and its PublicKeys."""
        if plain[:32] != self.key_parms_id or struct.unpack_from("<Q", plain, 32)[0] != dim:
            raise SealInputError(f"{what}: parameters do not match the server's")
        offset = 40
        for slot in range(dim):
            count = struct.unpack_from("<Q", plain, offset)[0]
            offset += 8
            if count != (self.decomposition if slot in filled else 0):
                raise SealInputError(f"{what}: not the key set the client generates")
            for _ in range(count):
                if plain[offset : offset + _HEADER.size] != self.key_header:
                    raise SealInputError(f"{what}: bad key header")
                self.public_key.check(plain, offset + _HEADER.size, what)
                offset += _HEADER.size + self.public_key.size


_LAYOUT = _Layout()
_MAX_CIPHERTEXT_B64 = 4 * (_HEADER.size + _deflate_bound(_LAYOUT.ciphertext.size) + 2) // 3


class PreparedKeys:
    """A client's validated public keys in a native buffer, reusable across requests and classes.

    Made by `prepare_keys`; ``nbytes`` is the memory it holds (for sizing a key cache).
    """

    __slots__ = ("_buffer", "nbytes")

    def __init__(self, buffer: ctypes.Array, nbytes: int):
        self._buffer = buffer
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"PreparedKeys(nbytes={self.nbytes})"


def prepare_keys(public_keys: bytes) -> PreparedKeys:
    """Validate the public-key blob from ``client.get_public_keys()`` and copy it into a native buffer.

    The blob is SEAL 3.5 GaloisKeys followed by RelinKeys. Both are checked structurally, with
    every coefficient range-checked, because a key the native code fails to load aborts the
    process. Takes ~50 ms for the usual ~9 MB, mostly inflating the compressed keys.
    """
    if not isinstance(public_keys, (bytes, bytearray, memoryview)):
        raise SealInputError(f"public keys must be bytes, not {type(public_keys).__name__}")
    # An immutable snapshot: what is validated is exactly what gets copied, even if the
    # caller mutates a bytearray afterwards.
    data = bytes(public_keys)
    offset = 0
    for what, (dim, filled) in _LAYOUT.kswitch.items():
        what = f"public keys: {what}"
        plain, offset = _read_object(data, offset, _LAYOUT.kswitch_size(dim, filled), what)
        _LAYOUT.check_kswitch(plain, dim, filled, what)
    if offset != len(data):
        raise SealInputError(f"public keys: {len(data) - offset} trailing bytes")
    # A private copy rather than a pointer into `data`: ComputeDotProduct takes a non-const
    # buffer, and one 9 MB memcpy (~5 ms) is cheap next to a single native call.
    return PreparedKeys((ctypes.c_byte * len(data)).from_buffer_copy(data), len(data))


def _decode_ciphertexts(ciphertexts: list[str], expected: int) -> bytes:
    """Validate the request's base64 ciphertexts and return them decoded and concatenated."""
    if not isinstance(ciphertexts, (list, tuple)) or not ciphertexts:
        raise SealInputError("ciphertexts must be a non-empty list of base64 strings")
    if len(ciphertexts) != expected:
        raise SealInputError(f"expected {expected} ciphertext(s) for this model, got {len(ciphertexts)}")
    raw = []
    for i, text in enumerate(ciphertexts):
        what = f"ciphertext {i}"
        if not isinstance(text, str):
            raise SealInputError(f"{what}: expected a base64 string, not {type(text).__name__}")
        if len(text) > _MAX_CIPHERTEXT_B64:
            raise SealInputError(f"{what}: {len(text)} characters is too long for a ciphertext")
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
            raise SealInputError(f"{what}: not valid base64 ({exc})") from None
        plain, end = _read_object(blob, 0, _LAYOUT.ciphertext.size, what)
        if end != len(blob):
            raise SealInputError(f"{what}: {len(blob) - end} trailing bytes")
        _LAYOUT.ciphertext.check(plain, 0, what)
        raw.append(blob)
    return b"".join(raw)


@functools.lru_cache(maxsize=None)
def _self_check() -> None:
    """Validate one ciphertext from the installed native client, once per process, so that a
    libeisdk whose format differs from the layout modelled here fails at startup, not per request."""
    client = einative.SEALClientInstance()
    try:
        _decode_ciphertexts(client.get_ciphertext_string_array(np.zeros(1)), 1)
    except SealInputError as exc:
        raise RuntimeError(f"libeisdk's ciphertext format is not the one validated here: {exc}") from exc


class SealLinearServer:
    """Encrypted scoring for a linear model: ``scores = coef @ x + intercept`` on CKKS ciphertexts.

    ``coef`` is (n_classes, n_features), or 1-D (n_features,) for a regressor or binary
    classifier; ``intercept`` has one value per row, or a single value used for every row
    (sklearn's scalar ``intercept_``). Predictions are byte-for-byte those of ``EIServer``.
    Thread-safe: native calls on one server are serialised, as libeisdk promises nothing.
    """

    def __init__(self, coef, intercept):
        w = np.asarray(coef, dtype=np.float64)
        w = w[None, :] if w.ndim == 1 else w
        b = np.asarray(intercept, dtype=np.float64).reshape(-1)
        if w.ndim != 2 or 0 in w.shape or b.size not in (1, w.shape[0]):
            shapes = f"coef {np.shape(coef)} and intercept {np.shape(intercept)}"
            raise ValueError(f"{shapes} do not form a linear model")
        b = np.broadcast_to(b, w.shape[:1])
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError("coef and intercept must be finite")
        if max(np.abs(w).max(), np.abs(b).max()) > _MAX_ABS_PARAMETER:
            raise ValueError(f"coef and intercept must be within +-{_MAX_ABS_PARAMETER:g}")
        _self_check()

        self._server = einative.SEALServerInstance()
        slots = ctypes.c_uint64()
        eiutils.handle_error(_native.GetServerSlotCount(self._server.native_ptr, ctypes.byref(slots)))
        self.n_classes, self.n_features = w.shape
        #: Ciphertexts per request: the client packs `slots` features into each.
        self.n_ciphertexts = -(-self.n_features // slots.value)

        chunks = np.zeros((self.n_classes, self.n_ciphertexts, slots.value))
        chunks.reshape(self.n_classes, -1)[:, : self.n_features] = w
        zero_rows = np.flatnonzero(np.linalg.norm(chunks, axis=2).max(axis=1) < _MIN_CHUNK_NORM)
        if zero_rows.size:
            raise ValueError(
                f"coef rows {zero_rows.tolist()} are (numerically) all zero; "
                "libeisdk aborts the process on such a row"
            )

        row_type = ctypes.c_double * self.n_features
        self._weights = [row_type.from_buffer_copy(row.tobytes()) for row in w]
        self._intercepts = [float(v) for v in b]
        self._result_capacity = self._server.get_ciphertext_buffer_size() * self.n_ciphertexts
        self._lock = threading.Lock()

    def predict(self, ciphertexts: list[str], public_keys: bytes | PreparedKeys) -> list[str]:
        """Return one base64 result ciphertext per row of ``coef``, for ``client.decrypt``.

        ``public_keys`` is the client's raw key blob (prepared for this call) or a cached
        `PreparedKeys`. Raises `SealInputError` for malformed input; nothing malformed reaches
        native code.
        """
        cipher_bytes = _decode_ciphertexts(ciphertexts, self.n_ciphertexts)
        keys = public_keys if isinstance(public_keys, PreparedKeys) else prepare_keys(public_keys)
        cipher = (ctypes.c_byte * len(cipher_bytes)).from_buffer_copy(cipher_bytes)
        result = (ctypes.c_byte * self._result_capacity)()
        with self._lock:
            out = [self._dot(m, cipher, keys, result) for m in range(self.n_classes)]
        return [base64.b64encode(r).decode("ascii") for r in out]

    def _dot(self, row: int, cipher: ctypes.Array, keys: PreparedKeys, result: ctypes.Array) -> bytes:
        """One native dot product. Unlike EIServer, which passes its result-buffer size as the
        ciphertext length, this passes the true length, so libeisdk cannot read past the input."""
        result_size = ctypes.c_uint64(len(result))
        error = _native.ComputeDotProduct(
            self._server.native_ptr,
            self.n_features,
            self._weights[row],
            self._intercepts[row],
            len(cipher),
            cipher,
            keys.nbytes,
            keys._buffer,
            ctypes.byref(result_size),
            result,
        )
        if error:
            raise SealInputError(f"native ComputeDotProduct failed: {error & 0xFFFFFFFF:#010x}")
        if result_size.value > len(result):
            raise RuntimeError(f"libeisdk wrote a {result_size.value}-byte result into {len(result)} bytes")
        return ctypes.string_at(result, result_size.value)
