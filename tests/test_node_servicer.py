"""The one status table of the node servicer."""

from __future__ import annotations

import grpc
import pytest

from nodes.handlers import BudgetExhausted, NodeBusy
from nodes.servicer import status_for
from psi.errors import ConfigError, ProtocolError, Refused, XmatchError


@pytest.mark.parametrize(
    ("exc", "code", "public"),
    [
        (
            Refused("civil-affairs", "purpose not allowed"),
            grpc.StatusCode.PERMISSION_DENIED,
            "purpose not allowed",
        ),
        (
            BudgetExhausted("civil-affairs", "budget exhausted"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "budget exhausted",
        ),
        (
            NodeBusy("civil-affairs", "node busy"),
            grpc.StatusCode.UNAVAILABLE,
            "civil-affairs: node busy",
        ),
        (
            ProtocolError("tag chunk: bad magic"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tag chunk: bad magic",
        ),
    ],
)
def test_status_table(exc: XmatchError, code: grpc.StatusCode, public: str) -> None:
    got_code, got_public, reason = status_for(exc)
    assert (got_code, got_public) == (code, public)
    assert reason


def test_internal_errors_do_not_reach_the_peer() -> None:
    code, public, reason = status_for(ConfigError("node.toml: match_sets[0] ('custody'): where: x"))
    assert code == grpc.StatusCode.INTERNAL and "custody" not in public and "custody" in reason
    code, public, reason = status_for(ValueError("150802198001010011"))
    assert code == grpc.StatusCode.INTERNAL and "1508" not in public + reason
    assert reason == "internal error (ValueError)"
