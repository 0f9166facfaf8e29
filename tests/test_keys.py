"""keys/: the federation CA and member credentials, driven through the real CLI."""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from keys.ca import init_ca, issue
from keys.certs import inspect_member_certificate, verify_member_certificate
from keys.handles import AuditSigner, TlsMaterial, load_tls_credentials
from keys.unsafe_cleartext import tls_private_key_pem
from psi.errors import ConfigError, InputError, InvalidKey, VerificationError

PASS_ENV = "XMATCH_TEST_PASSPHRASE"
PASSPHRASE = "correct horse battery staple"


def xmatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``xmatch`` entry point (or ``python -m xmatch``)."""
    exe = Path(sys.executable).parent / "xmatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xmatch"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with an encrypted key and two members, made by the CLI."""
    directory = tmp_path_factory.mktemp("pki")
    env = {PASS_ENV: PASSPHRASE}
    for args in (
        ("keys", "init-ca", "--dir", str(directory), "--passphrase-env", PASS_ENV),
        (
            "keys",
            "issue",
            "--dir",
            str(directory),
            "--name",
            "justice",
            "--role",
            "node",
            "--passphrase-env",
            PASS_ENV,
        ),
        (
            "keys",
            "issue",
            "--dir",
            str(directory),
            "--name",
            "civil-affairs",
            "--role",
            "coordinator",
            "--passphrase-env",
            PASS_ENV,
        ),
    ):
        done = xmatch(*args, env=env)
        assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unrelated CA that issued certificates under the same names."""
    directory = tmp_path_factory.mktemp("other-pki")
    init_ca(directory)
    issue(directory, name="justice", role="node")
    issue(directory, name="civil-affairs", role="coordinator")
    return directory


def tls(
    directory: Path, name: str, *, ca: Path | None = None, passphrase: bytes | None = None
) -> TlsMaterial:
    return load_tls_credentials(
        ca=ca or directory / "ca.crt",
        cert=directory / f"{name}.crt",
        key=directory / f"{name}.key",
        name=name,
        passphrase=passphrase,
    )


def test_cli_writes_every_file_with_private_keys_0600(pki: Path) -> None:
    expected = {
        "ca.crt",
        "ca.key",
        *(
            f"{n}{s}"
            for n in ("justice", "civil-affairs")
            for s in (".crt", ".key", ".audit.crt", ".audit.key", ".seal.crt", ".seal.key")
        ),
    }
    assert {p.name for p in pki.iterdir()} == expected
    for path in pki.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
            assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes(), path
        else:
            assert mode & 0o077 != 0o077


def test_certificates_chain_to_the_ca_and_name_the_member(pki: Path) -> None:
    ca_pem = (pki / "ca.crt").read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > _dt.timedelta(days=3600)
    for name, role in (("justice", "node"), ("civil-affairs", "coordinator")):
        cert_pem = (pki / f"{name}.crt").read_bytes()
        assert verify_member_certificate(cert_pem, ca_pem) == name
        cert = x509.load_pem_x509_certificate(cert_pem)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        info = inspect_member_certificate(
            (pki / f"{name}.audit.crt").read_bytes(), ca_pem=ca_pem, usage="audit"
        )
        assert (info.name, info.role, info.usage) == (name, role, "audit")


def test_tls_and_audit_certificates_are_not_interchangeable(pki: Path) -> None:
    ca_pem = (pki / "ca.crt").read_bytes()
    with pytest.raises(VerificationError, match="audit-signing"):
        verify_member_certificate((pki / "justice.crt").read_bytes(), ca_pem, usage="audit")
    with pytest.raises(VerificationError, match="TLS"):
        verify_member_certificate((pki / "justice.audit.crt").read_bytes(), ca_pem, usage="tls")


def test_passphrase_round_trip(pki: Path) -> None:
    material = tls(pki, "justice", passphrase=PASSPHRASE.encode())
    assert (material.name, material.role) == ("justice", "node")
    assert b"BEGIN PRIVATE KEY" in tls_private_key_pem(material)  # cleartext only in memory
    with pytest.raises(InvalidKey, match="encrypted"):
        tls(pki, "justice")
    with pytest.raises(InvalidKey, match="wrong passphrase"):
        tls(pki, "justice", passphrase=b"wrong")


def test_issue_needs_the_ca_passphrase_from_the_environment(pki: Path) -> None:
    done = xmatch("keys", "issue", "--dir", str(pki), "--name", "court", "--role", "node")
    assert done.returncode == 1
    assert "encrypted" in done.stderr and "Traceback" not in done.stderr
    done = xmatch(
        "keys",
        "issue",
        "--dir",
        str(pki),
        "--name",
        "court",
        "--role",
        "node",
        "--passphrase-env",
        "XMATCH_UNSET_VAR",
    )
    assert done.returncode == 1 and "not set" in done.stderr
    assert not (pki / "court.crt").exists() and not (pki / "court.key").exists()


def test_configured_name_must_match_the_certificate(pki: Path) -> None:
    with pytest.raises(ConfigError, match="certificate names 'justice', config says 'court'"):
        load_tls_credentials(
            ca=pki / "ca.crt",
            cert=pki / "justice.crt",
            key=pki / "justice.key",
            name="court",
            passphrase=PASSPHRASE.encode(),
        )


def test_key_of_another_member_is_refused(pki: Path) -> None:
    with pytest.raises(InvalidKey, match="does not belong"):
        load_tls_credentials(
            ca=pki / "ca.crt",
            cert=pki / "justice.crt",
            key=pki / "civil-affairs.key",
            name="justice",
            passphrase=PASSPHRASE.encode(),
        )


def test_certificate_from_another_ca_is_refused(pki: Path, other_pki: Path) -> None:
    with pytest.raises(VerificationError, match="not issued by this federation CA"):
        verify_member_certificate(
            (other_pki / "justice.crt").read_bytes(), (pki / "ca.crt").read_bytes()
        )
    with pytest.raises(VerificationError, match="not issued by this federation CA"):
        tls(other_pki, "justice", ca=pki / "ca.crt")
    with pytest.raises(VerificationError):
        AuditSigner.for_member(other_pki, name="justice", ca=pki / "ca.crt")


def test_expired_and_not_yet_valid_certificates_are_refused(pki: Path) -> None:
    ca_pem = (pki / "ca.crt").read_bytes()
    cert_pem = (pki / "justice.crt").read_bytes()
    now = _dt.datetime.now(_dt.UTC)
    with pytest.raises(VerificationError, match="expired"):
        verify_member_certificate(cert_pem, ca_pem, at=now + _dt.timedelta(days=800))
    with pytest.raises(VerificationError, match="not valid before"):
        verify_member_certificate(cert_pem, ca_pem, at=now - _dt.timedelta(days=1))


def test_existing_ca_and_member_are_never_overwritten(pki: Path) -> None:
    before = (pki / "ca.key").read_bytes()
    done = xmatch("keys", "init-ca", "--dir", str(pki))
    assert done.returncode == 1 and "already exists" in done.stderr
    assert (pki / "ca.key").read_bytes() == before
    with pytest.raises(InputError, match="already exists"):
        issue(pki, name="justice", role="node", passphrase=PASSPHRASE.encode())


@pytest.mark.parametrize("name", ["Justice", "1court", "court_x", "", "a" * 64, "法院"])
def test_invalid_member_names_are_refused(tmp_path: Path, name: str) -> None:
    init_ca(tmp_path)
    with pytest.raises(InputError, match="member name"):
        issue(tmp_path, name=name, role="node")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


@pytest.mark.parametrize("name", ["Bad Name", "../evil", "a/b", "..", "/etc/x"])
@pytest.mark.parametrize("action", ["issue", "issue-seal"])
def test_cli_rejects_a_bad_name_with_one_line(tmp_path: Path, action: str, name: str) -> None:
    """A usage error (exit 2) at parse time: the name becomes file names (DIR/NAME.crt)."""
    init_ca(tmp_path)
    done = xmatch("keys", action, "--dir", str(tmp_path), "--name", name, "--role", "node")
    assert done.returncode == 2
    assert done.stderr == (
        "xmatch: error: argument --name: expected a member name: 1-63 lower-case letters, "
        "digits or '-', starting with a letter (for example justice or civil-affairs); it "
        f"becomes a file name (see `xmatch keys {action} --help`)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]
    assert not (tmp_path.parent / "evil.crt").exists()


def test_separate_key_passphrase(tmp_path: Path) -> None:
    init_ca(tmp_path, passphrase=b"ca secret")
    issue(
        tmp_path, name="court", role="node", passphrase=b"ca secret", key_passphrase=b"node secret"
    )
    assert tls(tmp_path, "court", passphrase=b"node secret").name == "court"
    with pytest.raises(InvalidKey):
        tls(tmp_path, "court", passphrase=b"ca secret")


def test_handles_refuse_pickling_and_hide_keys(pki: Path) -> None:
    material = tls(pki, "justice", passphrase=PASSPHRASE.encode())
    signer = AuditSigner.for_member(
        pki, name="justice", passphrase=PASSPHRASE.encode(), ca=pki / "ca.crt"
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    for handle in (material, signer):
        with pytest.raises(TypeError):
            pickle.dumps(handle)
        assert "PRIVATE" not in repr(handle)
    with pytest.raises(TypeError):
        TlsMaterial(
            object(),
            name="x",
            role="node",
            ca_pem=b"",
            cert_pem=b"",
            key=tls_key,
            not_after=material.not_after,
        )
    assert not any(name.startswith(("private", "export")) for name in dir(signer))


def test_audit_signer_signatures_verify_under_its_certificate(pki: Path) -> None:
    signer = AuditSigner.for_member(pki, name="civil-affairs", passphrase=PASSPHRASE.encode())
    signature = signer.sign(b"checkpoint")
    cert = x509.load_pem_x509_certificate(signer.certificate_pem())
    public = cert.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(signature, b"checkpoint")
    assert public.public_bytes_raw() == signer.public_bytes()
    with pytest.raises(ConfigError, match="config says"):
        (pki / "x").mkdir(exist_ok=True)
        for suffix in (".audit.crt", ".audit.key"):
            (pki / "x" / f"court{suffix}").write_bytes((pki / f"justice{suffix}").read_bytes())
        AuditSigner.for_member(pki / "x", name="court", passphrase=PASSPHRASE.encode())


# --- a real mutual-TLS handshake -------------------------------------------------------


@pytest.fixture()
def server(pki: Path) -> Iterator[tuple[int, list[str | None]]]:
    """A gRPC server with justice's credentials; records the client's CN per call."""
    seen: list[str | None] = []

    def ping(request: bytes, context: grpc.ServicerContext) -> bytes:
        names = cast(list[bytes], context.auth_context().get("x509_common_name") or [])
        seen.append(names[0].decode() if names else None)
        return b"pong"

    handler = grpc.method_handlers_generic_handler(
        "xmatch.Test", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_secure_port(
        "127.0.0.1:0", tls(pki, "justice", passphrase=PASSPHRASE.encode()).server_credentials()
    )
    srv.start()
    try:
        yield port, seen
    finally:
        srv.stop(None)


def ping(port: int, credentials: grpc.ChannelCredentials, *, target: str) -> bytes:
    with grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", target)]
    ) as channel:
        call = channel.unary_unary(
            "/xmatch.Test/Ping", request_serializer=None, response_deserializer=None
        )
        reply: bytes = call(b"ping", timeout=5)
        return reply


def test_mutual_tls_accepts_members_and_names_the_peer(
    pki: Path, server: tuple[int, list[str | None]]
) -> None:
    port, seen = server
    client = tls(pki, "civil-affairs", passphrase=PASSPHRASE.encode())
    assert ping(port, client.channel_credentials(), target="justice") == b"pong"
    assert seen == ["civil-affairs"]


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    pki: Path, other_pki: Path, server: tuple[int, list[str | None]]
) -> None:
    port, seen = server
    outsider = tls(other_pki, "civil-affairs")
    # The outsider trusts the federation CA (so the server's certificate passes) but
    # presents a certificate of its own CA under a member's name: the server refuses.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=tls_private_key_pem(outsider),
        certificate_chain=outsider.cert_pem,
    )
    with pytest.raises(grpc.RpcError) as info:
        ping(port, credentials, target="justice")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []


def test_client_checks_the_server_name(pki: Path, server: tuple[int, list[str | None]]) -> None:
    port, seen = server
    client = tls(pki, "civil-affairs", passphrase=PASSPHRASE.encode())
    with pytest.raises(grpc.RpcError) as info:
        ping(port, client.channel_credentials(), target="court")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []
