"""Both X25519 backends (libcrypto_mb multi-buffer and OpenSSL) give the same bytes."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.errors import ProtocolError
from psi.hazmat import x25519
from tests.test_psi_ecdh import LOW_ORDER, ecdh_context, run_round
from tests.test_psi_keyed_hash import ids_from_ints
from tests.utils import load_vectors, parse_key_value_blocks, parse_labelled_hex

P = 2**255 - 19


def _crypto_mb_or_skip() -> None:
    try:
        x25519._crypto_mb()
    except OSError as exc:
        # ipp-crypto is a dependency, so only a CPU without AVX-512 IFMA skips.
        if "AVX-512 IFMA" not in str(exc):
            raise
        pytest.skip(str(exc))


@pytest.fixture(params=["crypto-mb", "openssl"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "crypto-mb":
        _crypto_mb_or_skip()
    return name


@pytest.fixture
def restore_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(x25519.ENV_VAR, raising=False)
    yield
    monkeypatch.delenv(x25519.ENV_VAR, raising=False)
    x25519.configure(quiet=True)


def _rows(*hex_values: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex("".join(hex_values)), np.uint8).reshape(-1, 32)


def _mult(scalar: bytes, u: bytes, backend: str) -> bytes:
    row = np.frombuffer(u, np.uint8).reshape(1, 32)
    out = x25519.scalar_mult(scalar, row, backend=backend)
    return bytes(out[0].tobytes())


@pytest.mark.parametrize(
    "vector", load_vectors("rfc7748/rfc7748.txt", parse_key_value_blocks), ids=lambda v: v["COUNT"]
)
def test_rfc7748_vectors(vector: dict[str, str], backend: str) -> None:
    out = _mult(bytes.fromhex(vector["INPUT_SCALAR"]), bytes.fromhex(vector["INPUT_U"]), backend)
    assert out.hex() == vector["OUTPUT_U"]


def test_rfc7748_iterations(backend: str) -> None:
    expected = load_vectors("rfc7748/iterations.txt", parse_labelled_hex)
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = _mult(k, u, backend), k
        if i == 1:
            assert k.hex() == expected["After one iteration"]
    assert k.hex() == expected["After 1,000 iterations"]


def test_rfc7748_section_6_1(backend: str) -> None:
    v = load_vectors("rfc7748/section6.1.txt", parse_labelled_hex)
    a, b = bytes.fromhex(v["Alice's private key, a"]), bytes.fromhex(v["Bob's private key, b"])
    nine = (9).to_bytes(32, "little")
    assert _mult(a, nine, backend).hex() == v["Alice's public key, X25519(a, 9)"]
    assert _mult(b, nine, backend).hex() == v["Bob's public key, X25519(b, 9)"]
    k1 = _mult(a, bytes.fromhex(v["Bob's public key, X25519(b, 9)"]), backend)
    assert k1.hex() == v["Their shared secret, K"]


@pytest.mark.parametrize("position", [0, 5, 12])
@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_points_are_refused(point: str, position: int, backend: str) -> None:
    rows = np.repeat(_rows("09" + "00" * 31), 13, axis=0)
    rows[position] = _rows(point)[0]
    with pytest.raises(ProtocolError, match=f"chunk 3: point {position} is a low-order point"):
        x25519.scalar_mult(os.urandom(32), rows, what="chunk 3", backend=backend)
    # The same points with the top bit set: X25519 ignores that bit (RFC 7748 section 5).
    rows[position, 31] |= 0x80
    with pytest.raises(ProtocolError, match=f"point {position} is a low-order point"):
        x25519.scalar_mult(os.urandom(32), rows, backend=backend)


# u-coordinates worth aiming at: non-canonical (p .. 2^255 - 1) and top-bit-set values.
_EDGES = [(P + i).to_bytes(32, "little") for i in (2, 3, 10, 18)] + [
    (2**256 - 1 - i).to_bytes(32, "little") for i in (0, 1, 7)
]
_U = st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(_EDGES))


@settings(max_examples=150, deadline=None)
@given(scalar=st.binary(min_size=32, max_size=32), points=st.lists(_U, min_size=1, max_size=21))
def test_backends_agree(scalar: bytes, points: list[bytes]) -> None:
    _crypto_mb_or_skip()
    rows = np.frombuffer(b"".join(points), np.uint8).reshape(-1, 32)
    outcomes = []
    for name in ("crypto-mb", "openssl"):
        try:
            outcomes.append(x25519.scalar_mult(scalar, rows, backend=name).tobytes())
        except ProtocolError as exc:
            outcomes.append(str(exc).encode())
    assert outcomes[0] == outcomes[1]


def test_environment_variable_wins_over_the_config_key(
    restore_backend: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crypto_mb_or_skip()
    assert x25519.configure("crypto-mb") == "crypto-mb" == x25519.backend()
    assert x25519.configure("openssl") == "openssl" == x25519.backend()
    monkeypatch.setenv(x25519.ENV_VAR, "openssl")
    assert x25519.configure("crypto-mb") == "openssl"
    monkeypatch.setenv(x25519.ENV_VAR, "crypto-mb")
    assert x25519.configure("openssl") == "crypto-mb"
    monkeypatch.setenv(x25519.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{x25519.ENV_VAR}: unknown X25519 backend 'fast'"):
        x25519.configure()


def test_unloadable_library_warns_once_and_falls_back(
    restore_backend: None, tmp_path: Path
) -> None:
    # A real file that is not a shared object: dlopen fails, as for a broken install.
    (tmp_path / "libcrypto_mb.so").write_bytes(b"not an ELF file\n")
    lines: list[str] = []
    chosen = x25519.configure("crypto-mb", library_dirs=[str(tmp_path)], on_fallback=lines.append)
    assert chosen == "openssl" == x25519.backend()
    (line,) = lines
    assert line.startswith("X25519: libcrypto_mb not used (") and "\n" not in line
    assert line.endswith("; falling back to OpenSSL")
    # the round still works, on OpenSSL
    rows = np.repeat(_rows("09" + "00" * 31), 20, axis=0)
    assert x25519.scalar_mult(bytes(32), rows).shape == (20, 32)
    # without a callback: one RuntimeWarning; quiet (a pool worker): nothing
    with pytest.warns(RuntimeWarning, match="falling back to OpenSSL"):
        x25519.configure("auto", library_dirs=[str(tmp_path)])
    x25519.configure("auto", library_dirs=[str(tmp_path)], quiet=True, on_fallback=lines.append)
    assert len(lines) == 1


def test_missing_library_falls_back(restore_backend: None, tmp_path: Path) -> None:
    lines: list[str] = []
    # An empty folder: the system loader is asked for libcrypto_mb.so by name and fails
    # unless it is installed system-wide, in which case crypto-mb is a correct outcome.
    chosen = x25519.configure("auto", library_dirs=[str(tmp_path)], on_fallback=lines.append)
    assert (chosen, len(lines)) in {("openssl", 1), ("crypto-mb", 0)}


@pytest.mark.parametrize("name", ["crypto-mb", "openssl"])
def test_round_on_each_backend(name: str, restore_backend: None) -> None:
    if name == "crypto-mb":
        _crypto_mb_or_skip()
    assert x25519.configure(name) == name
    roster = ids_from_ints(list(range(0, 300, 2)))
    match_set = ids_from_ints(list(range(0, 300, 3)))
    result, t_resp = run_round(roster, match_set, chunk=70, ctx=ecdh_context())
    assert result.matched.tolist() == list(range(0, 150, 3))
    assert result.transcript == t_resp


class _CountingPool(concurrent.futures.ThreadPoolExecutor):
    """A real thread pool that counts the tasks given to it."""

    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_set_chunks_look_one_chunk_ahead_only_for_a_set_held_whole() -> None:
    from psi.ecdh import EcdhResponder
    from psi.identifiers import encode_identities
    from tests.test_psi_keyed_hash import rng_for

    ids = encode_identities(ids_from_ints(list(range(300))))
    with _CountingPool() as pool:
        whole = EcdhResponder.generate(ecdh_context(), rng=rng_for(3), executor=pool)
        whole.load_set(ids)
        chunks = whole.set_chunks(70)
        first = next(chunks)
        assert pool.submitted == 4  # chunk 0 and chunk 1, two slices each
        rest = list(chunks)
    inline = EcdhResponder.generate(ecdh_context(), rng=rng_for(3))
    inline.load_set(ids)
    expected = list(inline.set_chunks(70))
    assert [c.to_bytes() for c in [first, *rest]] == [c.to_bytes() for c in expected]
    with _CountingPool() as pool:
        bucketed = EcdhResponder.generate(ecdh_context(), rng=rng_for(3), executor=pool)
        halves = [ids[:150], ids[150:]]
        bucketed.load_buckets([150, 150], lambda j: halves[j])
        next(bucketed.set_chunks(70))
        assert pool.submitted == 2  # one chunk at a time


def _cpu_unsuitable_here() -> bool:
    try:
        x25519._crypto_mb()
    except OSError as exc:
        return "AVX-512 IFMA" in str(exc)
    return False


def test_cpu_without_ifma_is_silent_under_auto_and_warns_when_forced(
    restore_backend: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a CPU without AVX-512 IFMA (an AMD EPYC, say) the real library refuses the CPU;
    # elsewhere the same refusal is made to happen by replacing the loader.
    if not _cpu_unsuitable_here():

        def refuse(dirs: object) -> object:
            raise x25519._CpuUnsuitable("mbx_is_crypto_mb_applicable: this CPU lacks AVX-512 IFMA")

        monkeypatch.setattr(x25519, "_load_crypto_mb", refuse)
    lines: list[str] = []
    assert x25519.configure("auto", on_fallback=lines.append) == "openssl"
    assert lines == []  # openssl is what auto means on this CPU: nothing to warn about
    assert x25519.configure("crypto-mb", on_fallback=lines.append) == "openssl"
    (line,) = lines  # asked for crypto-mb and not given it: the operator is told
    assert "lacks AVX-512 IFMA" in line and line.endswith("; falling back to OpenSSL")
