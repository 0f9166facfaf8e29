"""Identifier normalization: GB 11643 identity numbers, names, composite keys.

This is the one place where identity numbers are normalized. Everything that
matches (both PSI protocols, the node, the coordinator) goes through
:func:`normalize_id` or its vectorized twin :func:`normalize_id_column`, then
through :func:`encode_identities`, so two parties that hold the same person
always produce the same 16-byte block.

Rules (data-contracts.md, "Identity numbers" and "Names"):

1. NFKC (full-width digits and ``Ｘ`` become ASCII).
2. Remove white space (including NBSP and the ideographic space), hyphens and
   dashes, and invisible format characters (Unicode category ``Cf``: ZWSP
   U+200B..U+200D, WORD JOINER U+2060, BOM U+FEFF, soft hyphen, bidi marks).
3. Upper-case ``x``.
4. Convert 15-digit numbers (GB 11643-1989) to 18 by inserting ``19`` before
   the year and appending the check character. ``20`` is never guessed.
5. Reject: empty values, scientific notation (the digits are lost), any other
   character, a length other than 15 or 18, an impossible birth date, a birth
   date after ``today`` (only when ``today`` is given), a wrong check
   character. Address codes are *not* checked against any list, since retired
   codes remain valid in old numbers.

A birth date is "impossible" when it is not a Gregorian calendar date or its
year is before :data:`MIN_BIRTH_YEAR`.

Error messages never contain the number or any part of it; they state what is
wrong ("17 characters, expected 18 or 15"). The caller adds file, line and
column.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from psi.errors import InvalidIdentifier

__all__ = [
    "COMPOSITE_PREFIX",
    "ENCODED_SIZE",
    "KIND_COMPOSITE",
    "KIND_ID",
    "MIN_BIRTH_YEAR",
    "IdColumn",
    "check_character",
    "composite_key",
    "encode_identities",
    "identity_number",
    "looks_cut_to_15_digits",
    "normalize_id",
    "normalize_id_column",
    "normalize_name",
]

#: Years before this are treated as impossible birth dates (typos like 0990).
MIN_BIRTH_YEAR = 1800

#: ISO 7064 MOD 11-2 weights for positions 1..17 (GB 11643-1999, 6.2).
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
#: Weighted sum mod 11 -> check character.
_CHECK_CHARS = "10X98765432"

#: Hyphen-like characters an operator or a spreadsheet may put into a number.
_DASHES = frozenset("-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d")
_SCIENTIFIC = re.compile(r"[0-9]+(?:[.,][0-9]*)?[eE][+-]?[0-9]+")

#: Separators in minority names, folded to U+00B7 MIDDLE DOT (after NFKC, which
#: already maps U+0387 to U+00B7, U+FF0E to "." and U+FF65 to U+30FB).
_NAME_SEPARATORS = frozenset("\u2022\u30fb\uff65\uff0e.\u2027\u2219\u22c5\u0387\u00b7")
_MIDDLE_DOT = "\u00b7"

#: Size in bytes of one encoded identity (one AES block).
ENCODED_SIZE = 16
#: Kind byte (first byte of the encoding) for a canonical identity number.
KIND_ID = 0x01
#: Kind byte for a hashed composite key (name + birth date + sex).
KIND_COMPOSITE = 0x02
#: Every composite key starts with this prefix; no identity number can.
COMPOSITE_PREFIX = "N:"
_COMPOSITE_DST = b"xmatch-v1 composite-key sha256\x00"


def check_character(first17: str) -> str:
    """Return the ISO 7064 MOD 11-2 check character for 17 ASCII digits.

    Raises:
        InvalidIdentifier: ``first17`` is not exactly 17 ASCII digits
            (reason ``length`` or ``characters``).
    """
    if len(first17) != 17:
        raise InvalidIdentifier(f"{len(first17)} leading digits, expected 17", reason="length")
    if not (first17.isascii() and first17.isdigit()):
        raise InvalidIdentifier("leading part must be 17 digits", reason="characters")
    total = sum(w * (ord(c) - 48) for w, c in zip(_WEIGHTS, first17, strict=True))
    return _CHECK_CHARS[total % 11]


def identity_number(region: str, birth: datetime.date, sequence: int) -> str:
    """A valid 18-character number: 6-digit region, birth date, sequence (mod 1000), check.

    The one generator of identity numbers for tests, the demo's synthetic data
    and the benchmarks; the check character is computed, never guessed.

    Raises:
        ValueError: ``region`` is not 6 ASCII digits.
    """
    if len(region) != 6 or not (region.isascii() and region.isdigit()):
        raise ValueError("region must be 6 ASCII digits")
    body = f"{region}{birth:%Y%m%d}{sequence % 1000:03d}"
    return body + check_character(body)


def _strip(text: str) -> str:
    """NFKC, then drop white space, dashes and invisible format characters."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        c for c in text if not (c.isspace() or c in _DASHES or unicodedata.category(c) == "Cf")
    )


def _birth_date(yyyymmdd: str) -> datetime.date:
    """Parse the 8 birth-date digits or raise ``birth_date``."""
    year, month, day = int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:])
    if year < MIN_BIRTH_YEAR:
        raise InvalidIdentifier(
            f"birth year before {MIN_BIRTH_YEAR} (positions 7-10)", reason="birth_date"
        )
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise InvalidIdentifier(
            "birth date is not a calendar date (positions 7-14)", reason="birth_date"
        ) from None


def looks_cut_to_15_digits(raw: str) -> bool:
    """Whether ``raw`` is 18 ASCII digits ending in ``000``: what a spreadsheet makes of an
    identity number stored as a number (it keeps 15 significant digits; 身份证号后三位变0).

    Ask it of a number whose check character failed: about 1 in 11 of the cut numbers
    passes its check instead, and about 1 person in 1,100 really has a number ending in
    ``000``, so a passing number says nothing alone.
    """
    value = raw.strip()
    return len(value) == 18 and value.isascii() and value.isdigit() and value.endswith("000")


def normalize_id(raw: str, *, today: datetime.date | None = None) -> str:
    """Return the canonical 18-character GB 11643-1999 form of ``raw``.

    ``today`` enables the future-birth-date check; without it no date is
    "in the future" (the coordinator passes the round's ``as_of``).

    Raises:
        InvalidIdentifier: with ``reason`` one of ``empty``,
            ``scientific_notation``, ``characters``, ``length``,
            ``birth_date``, ``future_birth_date``, ``check``. The message never
            contains the number.
        TypeError: ``raw`` is not a ``str``.
    """
    if not isinstance(raw, str):
        raise TypeError("identity number must be a str")
    nfkc = unicodedata.normalize("NFKC", raw)
    # Scientific notation is detected before dashes are removed: "1.5E-17".
    compact = "".join(c for c in nfkc if not (c.isspace() or unicodedata.category(c) == "Cf"))
    if _SCIENTIFIC.fullmatch(compact):
        raise InvalidIdentifier(
            "scientific notation (a spreadsheet dropped the digits); "
            "store the column as text and export again",
            reason="scientific_notation",
        )
    text = _strip(raw).upper()
    if not text:
        raise InvalidIdentifier("empty identity number", reason="empty")
    if not text.isascii() or not all(c.isdigit() or c == "X" for c in text):
        raise InvalidIdentifier("characters other than digits and a final X", reason="characters")
    if len(text) == 15:
        if not text.isdigit():
            raise InvalidIdentifier("15-character number must be all digits", reason="characters")
        # GB 11643-1989 numbers belong to people born in the 1900s.
        body = text[:6] + "19" + text[6:]
        born = _birth_date(body[6:14])
        _check_future(born, today)
        return body + check_character(body)
    if len(text) != 18:
        raise InvalidIdentifier(f"{len(text)} characters, expected 18 or 15", reason="length")
    if not text[:17].isdigit():
        raise InvalidIdentifier("X is allowed only in position 18", reason="characters")
    born = _birth_date(text[6:14])
    _check_future(born, today)
    if check_character(text[:17]) != text[17]:
        raise InvalidIdentifier(
            "check character does not match (expected position 18)", reason="check"
        )
    return text


def _check_future(born: datetime.date, today: datetime.date | None) -> None:
    if today is not None and born > today:
        raise InvalidIdentifier(
            "birth date is after the evaluation date", reason="future_birth_date"
        )


# --------------------------------------------------------------------------
# Column path


@dataclass(frozen=True, eq=False)
class IdColumn:
    """Result of :func:`normalize_id_column`, one entry per input row.

    ``ids`` holds canonical numbers (``""`` where invalid), ``valid`` the
    mask, ``reasons`` the :class:`InvalidIdentifier` reason code or ``None``.
    """

    ids: npt.NDArray[np.str_]
    valid: npt.NDArray[np.bool_]
    reasons: list[str | None]

    def __len__(self) -> int:
        return len(self.reasons)

    @property
    def invalid_rows(self) -> npt.NDArray[np.int64]:
        """Row indices (0-based) of the invalid values."""
        return np.flatnonzero(~self.valid).astype(np.int64)


_WEIGHTS_ARR = np.array(_WEIGHTS, dtype=np.int64)
# Character code of the check character for each residue 0..10.
_CHECK_CODES = np.array([ord(c) for c in _CHECK_CHARS], dtype=np.uint32)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _as_u18(
    values: Sequence[str] | npt.NDArray[np.str_],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
    """Code points of each value as an (n, 18) uint32 array, plus a mask of
    rows whose value is exactly 18 characters long (only those are complete).
    """
    n = len(values)
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "U":
            values = values.astype(str)
        lengths = np.strings.str_len(values)
        arr = values.astype("<U18")
    else:
        # Lengths from Python, not from numpy, so trailing NULs are counted.
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        arr = np.array(values, dtype="<U18") if n else np.zeros(0, dtype="<U18")
    codes = np.ascontiguousarray(arr).view(np.uint32).reshape(n, 18)
    return codes, lengths == 18


def _fast_canonical(
    codes: npt.NDArray[np.uint32],
    complete: npt.NDArray[np.bool_],
    today: datetime.date | None,
) -> npt.NDArray[np.bool_]:
    """Rows that are already canonical and valid, decided with array arithmetic."""
    digits = codes[:, :17].astype(np.int64) - 48
    ok: npt.NDArray[np.bool_] = complete & np.all((digits >= 0) & (digits <= 9), axis=1)
    digits = np.where(ok[:, None], digits, 0)
    expected = _CHECK_CODES[(digits @ _WEIGHTS_ARR) % 11]
    ok &= codes[:, 17] == expected
    # Birth date, positions 7-14.
    d = digits[:, 6:14]
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_ok = (month >= 1) & (month <= 12)
    dim = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    ok &= (year >= MIN_BIRTH_YEAR) & month_ok & (day >= 1) & (day <= dim)
    if today is not None:
        limit = today.year * 10000 + today.month * 100 + today.day
        ok &= year * 10000 + month * 100 + day <= limit
    return ok


def normalize_id_column(
    values: Sequence[str] | npt.NDArray[np.str_], *, today: datetime.date | None = None
) -> IdColumn:
    """Normalize a whole column; elementwise identical to :func:`normalize_id`.

    Already-canonical 18-character ASCII values are verified with array
    arithmetic; every other value goes through :func:`normalize_id`. Invalid
    values never raise: they get ``""``, ``valid=False`` and a reason code.

    Raises:
        TypeError: a list element is not a ``str``.
    """
    n = len(values)
    if not isinstance(values, np.ndarray):
        for v in values:
            if not isinstance(v, str):
                raise TypeError("identity numbers must be str")
    codes, complete = _as_u18(values)
    fast = _fast_canonical(codes, complete, today)
    ids = np.zeros(n, dtype="<U18")
    ids[fast] = codes[fast].view("<U18").reshape(-1)
    valid = fast.copy()
    reasons: list[str | None] = [None] * n
    for i in np.flatnonzero(~fast).tolist():
        try:
            ids[i] = normalize_id(str(values[i]), today=today)
            valid[i] = True
        except InvalidIdentifier as exc:
            reasons[i] = exc.reason
    return IdColumn(ids=ids, valid=valid, reasons=reasons)


# --------------------------------------------------------------------------
# Names and composite keys


def normalize_name(raw: str) -> str:
    """NFKC, trim, remove inner white space, fold separators to U+00B7.

    Idempotent. Traditional-to-simplified folding (OpenCC) is not applied.

    Raises:
        TypeError: ``raw`` is not a ``str``.
    """
    if not isinstance(raw, str):
        raise TypeError("name must be a str")
    text = unicodedata.normalize("NFKC", raw)
    out = "".join(
        _MIDDLE_DOT if c in _NAME_SEPARATORS else c
        for c in text
        if not (c.isspace() or unicodedata.category(c) == "Cf")
    )
    # NFKC of the result must be stable for idempotence; U+00B7 is NFKC-stable.
    return unicodedata.normalize("NFKC", out)


def composite_key(name: str, birth_date: datetime.date, sex: Literal["M", "F"]) -> str:
    """Key for a person without an identity number: ``N:<name>|<date>|<sex>``.

    Raises:
        ValueError: the name is empty after normalization, or ``sex`` is not
            ``"M"`` or ``"F"``.
        TypeError: ``birth_date`` is not a ``datetime.date``.
    """
    if sex not in ("M", "F"):
        raise ValueError("sex must be 'M' or 'F'")
    if not isinstance(birth_date, datetime.date) or isinstance(birth_date, datetime.datetime):
        raise TypeError("birth_date must be a datetime.date")
    norm = normalize_name(name)
    if not norm:
        raise ValueError("empty name")
    return f"{COMPOSITE_PREFIX}{norm}|{birth_date.isoformat()}|{sex}"


# --------------------------------------------------------------------------
# 16-byte encoding

_POW10 = 10 ** np.arange(16, -1, -1, dtype=np.uint64)


def encode_identities(ids: Sequence[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.uint8]:
    """Encode identities as fixed 16-byte blocks, shape ``(n, 16)`` uint8.

    * canonical identity number: ``0x01`` + the 17 leading digits as a
      big-endian uint64 + 7 zero bytes (the check character is implied);
    * composite key (starts with ``"N:"``): ``0x02`` + the first 15 bytes of
      SHA-256(domain separator || UTF-8 key).

    Injective over canonical numbers; the kind byte keeps the two kinds apart.
    Canonical numbers are encoded in one numpy pass.

    Raises:
        InvalidIdentifier: a value is neither a canonical identity number nor a
            composite key (reason ``characters`` or ``check``); the message
            names the row, never the value. Normalize first.
    """
    n = len(ids)
    out = np.zeros((n, ENCODED_SIZE), dtype=np.uint8)
    if n == 0:
        return out
    codes, complete = _as_u18(ids)
    digits = codes[:, :17].astype(np.int64) - 48
    is_id = complete & np.all((digits >= 0) & (digits <= 9), axis=1)
    digits = np.where(is_id[:, None], digits, 0)
    check_ok = codes[:, 17] == _CHECK_CODES[(digits @ _WEIGHTS_ARR) % 11]
    value = digits.astype(np.uint64) @ _POW10
    out[:, 0] = KIND_ID
    out[:, 1:9] = value.astype(">u8").view(np.uint8).reshape(n, 8)
    for i in np.flatnonzero(~(is_id & check_ok)).tolist():
        v = str(ids[i])
        if is_id[i]:
            raise InvalidIdentifier(
                f"row {i}: check character does not match; normalize first", reason="check"
            )
        if not v.startswith(COMPOSITE_PREFIX):
            raise InvalidIdentifier(
                f"row {i}: not a canonical identity number or composite key",
                reason="characters",
            )
        digest = hashlib.sha256(_COMPOSITE_DST + v.encode("utf-8")).digest()
        out[i, 0] = KIND_COMPOSITE
        out[i, 1:] = np.frombuffer(digest[:15], dtype=np.uint8)
    return out
