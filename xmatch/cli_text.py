"""Help text and argument types shared by the command-line modules.

A type here raises :class:`argparse.ArgumentTypeError`, so a bad value is a
usage error (exit 2, one line naming the argument) before any work starts.
Values are not echoed (whatever was typed could be an identity number), except
a well-formed date, which cannot be one.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as _dt
import math
import re
from collections.abc import Callable

_ROUND_ID = re.compile(r"[0-9a-f]{32}")

#: ``--as-of`` lies at most this many days after today (docs/coordinator.md, "Exit codes")
AS_OF_DAYS_AHEAD = 366
#: the earliest evaluation date: the 18-digit identity numbers of GB 11643-1999 date from then
AS_OF_EARLIEST = _dt.date(2000, 1, 1)


def examples(*lines: str) -> str:
    """A subcommand's epilog: its examples, shown as written (RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def round_id(text: str) -> str:
    """A ``--round`` argument: 32 hex digits (a round's id); anything else is a usage error.

    The value is not echoed: it could be anything pasted there, an identity number too.
    """
    value = text.strip().lower()
    if _ROUND_ID.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            "expected a round id of 32 hex digits, as round run prints it"
        )
    return value


def source(text: str) -> str:
    """A ``NODE/SET`` argument: a bad one is a usage error (exit 2), like a bad date."""
    node, slash, dataset = text.strip().partition("/")
    if not (slash and node and dataset and "/" not in dataset):
        raise argparse.ArgumentTypeError("expected NODE/SET, for example justice/custody")
    return text.strip()


def member_name(text: str) -> str:
    """A member's name (``keys issue --name``, ``round share --department``).

    The name becomes file names (``DIR/NAME.crt``), so ``../x`` or ``a/b`` must
    never reach the handler; the rule is the certificates' own
    (:data:`keys.certs.NAME_PATTERN`), imported only when the argument is given.
    """
    from keys.certs import NAME_PATTERN

    if NAME_PATTERN.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            "expected a member name: 1-63 lower-case letters, digits or '-', starting with "
            "a letter (for example justice or civil-affairs); it becomes a file name"
        )
    return text


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """The type of a whole-number argument from ``low`` to ``high`` (``None``: no limit)."""
    wanted = f"from {low:,} to {high:,}" if high is not None else f"of at least {low:,}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected a whole number {wanted}")
        return value

    return parse


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("expected a number of seconds, 0 or more")
    return value


def date(text: str) -> _dt.date:
    """A ``YYYY-MM-DD`` date that exists."""
    form = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text)
    if form is None:
        # a date has at most 10 characters: a longer value (an identity number pasted
        # in the wrong place) is not echoed
        shown = f": {text!r}" if len(text) <= 10 else ""
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form{shown}")
    year, month, day = (int(part) for part in form.groups())
    if not 1 <= month <= 12:
        raise argparse.ArgumentTypeError(f"{text}: there is no month {month}")
    days = calendar.monthrange(year, month)[1]
    if not 1 <= day <= days:
        raise argparse.ArgumentTypeError(
            f"{text}: this date does not exist ({calendar.month_name[month]} {year} "
            f"has {days} days)"
        )
    return _dt.date(year, month, day)


def as_of(text: str) -> _dt.date:
    """An evaluation date (``--as-of``): a :func:`date` from :data:`AS_OF_EARLIEST` to a
    year after today.

    Further ahead, every child has turned 18 and would get EXIT from the roster
    alone, while every node refuses the date (``max_future_days``, at most ten
    years): such a date is a typo, refused before anything is read or written.
    Before 2000 no roster's identity numbers existed: ``0001-01-01`` put every
    child's birth in the future, one roster problem per row.
    """
    value = date(text)
    if value < AS_OF_EARLIEST:
        raise argparse.ArgumentTypeError(
            f"{text}: before {AS_OF_EARLIEST.isoformat()}; the evaluation date is the day "
            "the decisions hold for"
        )
    today = _dt.date.today()
    if value > today + _dt.timedelta(days=AS_OF_DAYS_AHEAD):
        raise argparse.ArgumentTypeError(
            f"{text}: more than a year after today ({today.isoformat()}); "
            "the evaluation date may lie at most one year ahead"
        )
    return value
