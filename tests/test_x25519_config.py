"""The x25519_backend key of node.toml and coordinator.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.config import load_node_config
from psi.errors import ConfigError
from tests import configs
from tests.configs import put
from tests.test_node_config import GOOD, folder, write

__all__ = ["folder"]  # the fixture, used by name below


def test_default_is_auto(folder: Path) -> None:
    assert load_node_config(write(folder, GOOD)).node.x25519_backend == "auto"


@pytest.mark.parametrize("name", ["auto", "crypto-mb", "openssl"])
def test_each_backend_is_accepted(folder: Path, name: str) -> None:
    doc = configs.apply(GOOD, put("node.x25519_backend", name))
    assert load_node_config(write(folder, doc)).node.x25519_backend == name


def test_unknown_backend_is_one_line_naming_the_key(folder: Path) -> None:
    doc = configs.apply(GOOD, put("node.x25519_backend", "fast"))
    with pytest.raises(ConfigError) as info:
        load_node_config(write(folder, doc))
    message = str(info.value)
    assert "node.x25519_backend" in message and "\n" not in message
