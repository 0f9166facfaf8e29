"""Shared fixtures.

``pki``: a federation CA in a temporary folder (one per test session), with
``pki.issue(name, role)`` to get a member's certificate and keys (issued once
per name). ``pki_factory`` makes further, independent CAs (e.g. a foreign CA
whose members must be refused at the TLS layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# real database servers (PostgreSQL, MariaDB), started on first use per worker
pytest_plugins = ("tests.dbservers",)


@dataclass(frozen=True)
class Member:
    """File paths of one member's credentials, as ``xmatch keys issue`` writes them."""

    name: str
    role: str
    cert: Path
    key: Path
    audit_cert: Path
    audit_key: Path


@dataclass
class Pki:
    """A federation CA folder (``ca.crt``/``ca.key``) and the members issued from it."""

    dir: Path
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def issue(self, name: str, role: str = "node") -> Member:
        """The member ``name``, issuing its credentials on first use."""
        from keys.ca import issue

        if name not in self.members:
            issue(self.dir, name=name, role=role)
            self.members[name] = Member(
                name=name,
                role=role,
                cert=self.dir / f"{name}.crt",
                key=self.dir / f"{name}.key",
                audit_cert=self.dir / f"{name}.audit.crt",
                audit_key=self.dir / f"{name}.audit.key",
            )
        return self.members[name]


def _new_pki(directory: Path) -> Pki:
    from keys.ca import init_ca

    directory.mkdir(parents=True, exist_ok=True)
    init_ca(directory)
    return Pki(dir=directory)


@pytest.fixture(scope="session")
def pki_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Pki]:
    """Make a fresh, independent federation CA."""

    def make() -> Pki:
        return _new_pki(tmp_path_factory.mktemp("pki"))

    return make


@pytest.fixture(scope="session")
def pki(pki_factory: Callable[[], Pki]) -> Pki:
    """The session's federation CA."""
    return pki_factory()
