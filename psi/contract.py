"""The data contract in one place: codes, columns, protocol names and encodings.

Dependency-free (the standard library's ``typing`` only), so every layer may
import it: nodes/ and coordinator/ cannot import each other, and both need the
same vocabulary (data-contracts.md, eligibility.md, protocols.md). Values here
are names on the wire and in config files; changing one is a format change.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CIRCUMSTANCES",
    "CIRCUMSTANCE_CODES",
    "ECDH",
    "ECDH_SUITES",
    "FILE_ENCODINGS",
    "GM_ECDH_SUITES",
    "GM_KEYED_HASH_PRFS",
    "KEYED_HASH",
    "KEYED_HASH_PRFS",
    "PAYLOAD_COLUMNS",
    "PAYLOAD_TYPES",
    "PROTOCOLS",
    "SERVICE",
    "FileEncoding",
    "PayloadType",
    "ProtocolName",
    "ServiceReport",
]

#: The parent circumstance codes of eligibility.md (情形), in the spec's order.
CIRCUMSTANCE_CODES: Final = (
    "DEAD",
    "MISSING",
    "SEVERE_DISABILITY",
    "SEVERE_ILLNESS",
    "IMPRISONED",
    "DRUG_REHAB",
    "OTHER_RESTRICTION",
    "LOST_CONTACT",
    "GUARDIANSHIP_REVOKED",
    "DEPORTED",
)
#: A match from a service-coverage set (medical insurance, school...), not a circumstance.
SERVICE: Final = "SERVICE"
#: Every code a match set may declare: the circumstances plus SERVICE.
CIRCUMSTANCES: Final = frozenset((*CIRCUMSTANCE_CODES, SERVICE))

PayloadType = Literal["date", "int"]
#: Evidence columns a match may return, and their types (data-contracts.md, evidence.csv).
PAYLOAD_TYPES: Final[dict[str, PayloadType]] = {
    "start_date": "date",
    "end_date": "date",
    "disability_category": "int",
    "disability_grade": "int",
}
PAYLOAD_COLUMNS: Final = tuple(PAYLOAD_TYPES)

ProtocolName = Literal["ecdh", "keyed-hash"]
ECDH: Final = "ecdh"
KEYED_HASH: Final = "keyed-hash"
PROTOCOLS: Final[tuple[ProtocolName, ...]] = (ECDH, KEYED_HASH)
#: The ecdh hash-to-curve suites (psi.hazmat.hash_to_curve.SUITES; a test keeps them equal).
ECDH_SUITES: Final = (
    "x25519-sha256-u",
    "curve25519_XMD:SHA-512_ELL2_RO_",
    "curve25519_XMD:SHA-512_ELL2_NU_",
)
#: The keyed-hash PRFs but the GM one, sorted (psi.keyed_hash.PRFS; a test keeps them equal).
KEYED_HASH_PRFS: Final = ("aes128-ecb-v1", "aes256-ecb-v1")
#: The GM/T (国密) suite and PRF: accepted when listed, never by default (docs/psi.md).
GM_ECDH_SUITES: Final = ("SM2_XMD:SM3_SSWU_RO_",)
GM_KEYED_HASH_PRFS: Final = ("sm4-ecb-v1",)

#: What a round reports of a SERVICE set (eligibility.md, section 四(一)): the covered
#: children it did not match ("gaps", the default) or those it matched ("needs").
ServiceReport = Literal["gaps", "needs"]

#: Text encodings of CSV inputs (rosters, match sets): "auto" detects UTF-8 or GB 18030.
FileEncoding = Literal["auto", "utf-8", "gb18030"]
FILE_ENCODINGS: Final[tuple[FileEncoding, ...]] = ("auto", "utf-8", "gb18030")
