"""gRPC's own log stays off the operator's terminal unless asked for.

docs/node.md, "gRPC's own log", and docs/coordinator.md say what is set and how to undo it.

Real processes: a node started by the product's launcher (:func:`xmatch.demo.start_node`,
stderr to a file) and ``xmatch round run``. The connections a node refuses in the TLS
handshake, where no code of ours runs, each made gRPC's C core print a raw line
(``I1204 04:11:13.043842 25862 ssl_transport_security.cc:2563] Handshake failed …``);
the coordinator printed one beside its own ``warning:`` line. The node is stopped before
its stderr is read, so every line it would write is in the file.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from coordinator import exit_codes
from keys.ca import init_ca, issue
from keys.handles import load_tls_credentials
from proto import xmatch_pb2, xmatch_pb2_grpc
from tests.federation import (
    SPECS,
    Federation,
    build_federation,
    coordinator_toml,
    round_run,
    start_node,
    stop_nodes,
)
from xmatch.demo import NodeProcess
from xmatch.entry import GRPC_VERBOSITY_DEFAULT, quiet_grpc_core

pytestmark = pytest.mark.integration

NODE = "justice"
COORDINATOR = "civil-affairs"
#: the prefix of an absl log line: severity, MMDD, time
RAW_GRPC_LINE = re.compile(r"^[EWIF]\d{4} \d{2}:\d{2}:\d{2}", re.MULTILINE)


@dataclass
class Setup:
    fed: Federation
    foreign: Path  # a second CA, with a coordinator certificate of its own

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.fed.ports[NODE]}"

    @property
    def pki(self) -> Path:
        return self.fed.root / "pki"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    fed = build_federation(tmp_path, specs=tuple(s for s in SPECS if s.name == NODE))
    foreign = tmp_path / "foreign-pki"
    init_ca(foreign)
    issue(foreign, name=COORDINATOR, role="coordinator")
    return Setup(fed, foreign)


def _capabilities(setup: Setup, creds: grpc.ChannelCredentials | None) -> list[str]:
    """The match sets the node lists, over TLS with ``creds`` or in plain text (``None``)."""
    options = [("grpc.ssl_target_name_override", NODE)]
    channel = (
        grpc.insecure_channel(setup.address)
        if creds is None
        else grpc.secure_channel(setup.address, creds, options=options)
    )
    with channel:
        caps = xmatch_pb2_grpc.NodeStub(channel).GetCapabilities(
            xmatch_pb2.CapabilitiesRequest(), timeout=5
        )
    return [m.name for m in caps.match_sets]


def _member_creds(setup: Setup) -> grpc.ChannelCredentials:
    tls = load_tls_credentials(
        ca=setup.pki / "ca.crt",
        cert=setup.pki / f"{COORDINATOR}.crt",
        key=setup.pki / f"{COORDINATOR}.key",
        name=COORDINATOR,
    )
    return tls.channel_credentials()


def _refused_handshakes(setup: Setup) -> None:
    """Four connections the node refuses in the handshake, and a port scanner's connect."""
    host, port = "127.0.0.1", setup.fed.ports[NODE]
    with socket.create_connection((host, port), timeout=5):
        pass  # connect and close: a port scanner
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
        raw.settimeout(5)
        while raw.recv(4096):  # until the node closes the connection
            pass
    ca = (setup.pki / "ca.crt").read_bytes()
    refused: list[Callable[[], list[str]]] = [
        lambda: _capabilities(setup, None),  # plain-text gRPC to the TLS port
        lambda: _capabilities(setup, grpc.ssl_channel_credentials(root_certificates=ca)),
        lambda: _capabilities(  # a client certificate from another CA
            setup,
            grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=(setup.foreign / f"{COORDINATOR}.key").read_bytes(),
                certificate_chain=(setup.foreign / f"{COORDINATOR}.crt").read_bytes(),
            ),
        ),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _foreign_round(setup: Setup) -> tuple[int, str]:
    """``xmatch round run`` with the other CA's identity: the node's certificate fails
    its check, so the one sub-round fails (its own log and state, not the good ones)."""
    foreign = setup.foreign
    config = coordinator_toml(
        setup.fed,
        "foreign.coordinator.toml",
        coordinator={
            "ca": str(foreign / "ca.crt"),
            "cert": str(foreign / f"{COORDINATOR}.crt"),
            "key": str(foreign / f"{COORDINATOR}.key"),
            "audit_log": "logs/foreign.audit.jsonl",
            "state": "state/foreign.sqlite",
        },
    )
    result = round_run(config, setup.fed.root / "out-foreign", timeout=120)
    return result.returncode, result.stderr


def _handshake_line(line: str) -> bool:
    return RAW_GRPC_LINE.match(line) is not None and "Handshake failed" in line


def _start(setup: Setup) -> NodeProcess:
    node = start_node(NODE, setup.fed.config(NODE), log_dir=setup.fed.root / "logs")
    setup.fed.nodes.append(node)
    return node


def _stopped_stderr(node: NodeProcess) -> str:
    stop_nodes([node])
    assert node.process.returncode == 0  # SIGTERM: a clean stop, not a crash
    return node.stderr_path.read_text(encoding="utf-8")


def _probed(setup: Setup) -> tuple[str, int, str]:
    """A node through the refused handshakes and a round by a coordinator of another CA,
    still answering a member afterwards: the node's stderr, the round's exit code and
    the coordinator's stderr."""
    node = _start(setup)
    try:
        _refused_handshakes(setup)
        code, coordinator_err = _foreign_round(setup)
        assert _capabilities(setup, _member_creds(setup)) == ["custody"]
    finally:
        err = _stopped_stderr(node)
    return err, code, coordinator_err


def test_refused_handshakes_print_no_grpc_line_and_the_node_keeps_serving(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    err, code, coordinator_err = _probed(setup)
    assert RAW_GRPC_LINE.findall(err) == [], err
    assert code == exit_codes.PARTIAL, coordinator_err
    assert f"TLS handshake with {setup.address} failed (certificate not accepted)" in (
        coordinator_err
    )
    assert RAW_GRPC_LINE.findall(coordinator_err) == [], coordinator_err


def test_a_grpc_verbosity_the_user_set_is_kept(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same connections with GRPC_VERBOSITY=INFO: gRPC's lines are back, on both
    sides (which also shows that the test above would see them)."""
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")
    err, _, coordinator_err = _probed(setup)
    refusals = [line for line in err.splitlines() if _handshake_line(line)]
    # garbage, plain text, no certificate, another CA; the coordinator of another CA
    # refuses the node's certificate first, so only its own side has a line for that
    assert len(refusals) >= 4, err
    assert any(_handshake_line(line) for line in coordinator_err.splitlines()), coordinator_err


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, GRPC_VERBOSITY_DEFAULT),
        ("", GRPC_VERBOSITY_DEFAULT),  # gRPC reads an empty value as unset
        ("DEBUG", "DEBUG"),
        ("NONE", "NONE"),
    ],
)
def test_quiet_grpc_core_sets_only_an_unset_verbosity(before: str | None, after: str) -> None:
    environ = {"PATH": os.defpath} | ({} if before is None else {"GRPC_VERBOSITY": before})
    quiet_grpc_core(environ)
    assert environ == {"PATH": os.defpath, "GRPC_VERBOSITY": after}
