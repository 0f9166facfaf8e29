"""GM keys in node.toml and coordinator.toml: opt-in suites/PRFs, the log profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.config import (
    ECDH_SUITES,
    GM_ECDH_SUITES,
    GM_KEYED_HASH_PRFS,
    KEYED_HASH_PRFS,
    load_node_config,
)
from psi import keyed_hash
from psi.ecdh import SUITES
from psi.errors import ConfigError
from tests import configs
from tests.configs import put
from tests.test_node_config import GOOD, SET, folder, write

__all__ = ["folder"]  # the fixture, re-used


def test_gm_names_are_psi_names_and_not_defaults() -> None:
    assert sorted(ECDH_SUITES + GM_ECDH_SUITES) == sorted(SUITES)
    assert sorted(KEYED_HASH_PRFS + GM_KEYED_HASH_PRFS) == sorted(keyed_hash.PRFS)
    assert not set(GM_ECDH_SUITES) & set(ECDH_SUITES)
    assert not set(GM_KEYED_HASH_PRFS) & set(KEYED_HASH_PRFS)


def test_gm_only_match_set_and_gm_log_profile(folder: Path) -> None:
    doc = configs.apply(
        GOOD,
        put(f"{SET}.suites", ["SM2_XMD:SM3_SSWU_RO_"]),
        put(f"{SET}.prfs", ["sm4-ecb-v1"]),
        put("node.audit_profile", "gm"),
    )
    cfg = load_node_config(write(folder, doc))
    ms = cfg.match_sets[0]
    assert ms.suites == ["SM2_XMD:SM3_SSWU_RO_"] and ms.prfs == ["sm4-ecb-v1"]
    assert cfg.node.audit_profile == "gm"
    assert cfg.node.audit_sm2_key_path == folder / "pki/justice.audit-sm2.key"
    default = load_node_config(write(folder, GOOD))
    assert default.node.audit_profile == "international"
    assert "SM2_XMD:SM3_SSWU_RO_" not in default.match_sets[0].suites


def test_unknown_profile_is_one_line(folder: Path) -> None:
    doc = configs.apply(GOOD, put("node.audit_profile", "sm"))
    with pytest.raises(ConfigError, match=r"node\.audit_profile"):
        load_node_config(write(folder, doc))
