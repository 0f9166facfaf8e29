"""``[[shares]]`` of coordinator.toml: which work lists go to which service department.

One entry per service department (医保, 教育, 妇联, 残联: a node of the
federation). ``lists`` says which of its lists it receives, ``columns`` which
columns each row carries (and no other), ``purpose`` what the lists are for
(logged on both sides). ``gap_sets`` names the department's own service sets
whose coverage gaps it receives; by default every coverage set of that node.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["SHARE_COLUMNS", "SHARE_LISTS", "ShareEntry"]

ShareList = Literal["enrolled", "gaps", "exits"]
SHARE_LISTS: tuple[ShareList, ...] = ("enrolled", "gaps", "exits")
ShareColumn = Literal[
    "child_id",
    "child_name",
    "child_birth_date",
    "child_sex",
    "region_code",
    "category",
    "decision",
    "next_check_due",
]
SHARE_COLUMNS: tuple[ShareColumn, ...] = (
    "child_id",
    "child_name",
    "child_birth_date",
    "child_sex",
    "region_code",
    "category",
    "decision",
    "next_check_due",
)


class ShareEntry(BaseModel):
    """One ``[[shares]]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    #: the department's node name, as in its certificate and [[nodes]]
    department: str = Field(min_length=1)
    lists: list[ShareList] = Field(min_length=1)
    columns: list[ShareColumn] = Field(min_length=1)
    purpose: str = Field(default="service-follow-up", min_length=1, max_length=200)
    #: the department's own service sets (names of its match sets) whose gaps it receives
    gap_sets: list[str] | None = None

    @field_validator("lists", "columns")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a value is listed twice")
        return value
