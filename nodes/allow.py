"""Per-requester query-size limits of an ``allow`` entry (``max_query_size``).

Kept apart from :mod:`nodes.config`, which only declares the key; the reasons
for the default are in ``docs/node.md`` and ``docs/threat-model.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

#: The largest roster an ``allow`` entry admits unless it sets ``max_query_size``.
#: A province's roster of supported children is a few thousand (Inner Mongolia,
#: 2020: 2,646 de facto unsupported children, about 4,100 orphans; domain-facts.md),
#: so 100,000 leaves a wide margin, while one county and birth year (365,000 valid
#: identity numbers) or a whole league is refused.
DEFAULT_ALLOW_MAX_QUERY_SIZE = 100_000


class _Entry(Protocol):
    @property
    def requester(self) -> str: ...

    @property
    def max_query_size(self) -> int: ...


def max_query_size_for(allow: Sequence[_Entry], requester: str) -> int:
    """The ``max_query_size`` of ``requester``'s allow entry (0: not allowed)."""
    return next((a.max_query_size for a in allow if a.requester == requester), 0)


def check_sizes(allow: Sequence[_Entry], *, min_query_size: int, where: str) -> None:
    """Every entry's ``max_query_size`` is at least the set's ``min_query_size``.

    Raises:
        ValueError: one is below it (the message names ``where``.allow[j]).
    """
    for j, entry in enumerate(allow):
        if entry.max_query_size < min_query_size:
            raise ValueError(
                f"{where}.allow[{j}].max_query_size: {entry.max_query_size} is below the "
                f"set's min_query_size ({min_query_size})"
            )
