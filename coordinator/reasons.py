"""Written reasons (书面说明理由): one catalogue of templates per language.

A rule in :mod:`coordinator.eligibility` returns :class:`Reason` values: a
template key and the facts that fill it (a parent, a circumstance, a source,
dates). Nothing else writes reason text. :func:`render` turns a reason into
Chinese (the default) or English; every template exists in both languages
with the same placeholders (a test checks this).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Union

from coordinator.records import Category, Circumstance, Decision, Role, Status

Lang = Literal["zh", "en"]


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month, as in "support stops from November 2026"."""

    year: int
    month: int

    @classmethod
    def after(cls, day: date) -> Month:
        """The month after the one containing ``day`` (次月)."""
        if day.month == 12:
            return cls(day.year + 1, 1)
        return cls(day.year, day.month + 1)


@dataclass(frozen=True, slots=True)
class DisabilityCategory:
    """A disability certificate's category number (1 视力 ... 7 多重)."""

    number: int


@dataclass(frozen=True, slots=True)
class RosterColumn:
    """A roster column that holds identity numbers (``child_id``, ``father_id``, ``mother_id``).

    Chinese reasons name it in Chinese (儿童身份证号), English ones by the column.
    """

    name: str


@dataclass(frozen=True, slots=True)
class IdProblem:
    """Why a roster identity number is invalid, as :class:`coordinator.records.RowProblem`
    says it (English, for stderr); Chinese reasons show :data:`ID_PROBLEMS_ZH` of it, so
    that no English stands inside a Chinese reason."""

    message: str


Arg = Union[
    str,
    RosterColumn,
    IdProblem,
    int,
    date,
    Month,
    DisabilityCategory,
    Circumstance,
    Role,
    Category,
    Decision,
    "Reason",
    tuple[str, ...],
]


class Reason(NamedTuple):
    """One written reason: a template key and its arguments, rendered on demand.

    A named tuple rather than a dataclass: a round builds millions of them.
    """

    key: str
    args: tuple[tuple[str, Arg], ...] = ()

    def text(self, lang: Lang = "zh") -> str:
        """This reason in ``lang``."""
        return render(self, lang)


def reason(key: str, **args: Arg) -> Reason:
    """Build a :class:`Reason`; ``key`` must be in :data:`TEMPLATES`."""
    if key not in TEMPLATES:
        raise KeyError(key)
    return _new_reason(Reason, (key, tuple(args.items())))


#: ``Reason(key, args)`` without the Python-level ``__new__`` of a named tuple
_new_reason = tuple.__new__


#: key -> (Chinese, English). Placeholders are filled with localized arguments.
TEMPLATES: dict[str, tuple[str, str]] = {
    # -- one evidence record (a fact), as is_current describes it --
    "fact_no_dates": (
        "{code}({source}),无日期(来源部门已按本轮评估日期筛选)",
        "{code} ({source}), no dates (the source applied the thresholds)",
    ),
    "fact_on": ("{code}({source}),{start}", "{code} ({source}) on {start}"),
    "fact_since": ("{code}({source}),自{start}起", "{code} ({source}) since {start}"),
    "fact_since_until": (
        "{code}({source}),自{start}起至{end}止",
        "{code} ({source}) since {start}, until {end}",
    ),
    "fact_until": ("{code}({source}),至{end}止", "{code} ({source}) until {end}"),
    "fact_certificate": (
        "{code}({source}),{grade},残疾人证{start}核发,{expiry}到期",
        "{code} ({source}), {grade}, certificate issued {start}, expires on {expiry}",
    ),
    "grade": ("{category}{grade}级", "grade {grade}, category {category}"),
    "grade_filtered": (
        "等级或类别未提供(来源部门已筛选)",
        "grade or category not given (filtered by the source)",
    ),
    # -- a record that does not count on the evaluation date --
    "lapsed_released": (
        "{code}({source}),已于{end}期满释放或解除",
        "{code} ({source}), released on {end}",
    ),
    "lapsed_contact_regained": (
        "{code}({source}),已于{end}恢复联系",
        "{code} ({source}), contact regained on {end}",
    ),
    "lapsed_certificate_expired": (
        "{code}({source}),{grade},残疾人证已于{end}到期",
        "{code} ({source}), {grade}, certificate expired on {end}",
    ),
    "lapsed_declaration_revoked": (
        "{code}({source}),宣告已于{end}撤销",
        "{code} ({source}), declaration revoked on {end}",
    ),
    "lapsed_guardianship_restored": (
        "{code}({source}),已于{end}恢复监护资格",
        "{code} ({source}), guardianship restored on {end}",
    ),
    "lapsed_ended": ("{code}({source}),已于{end}终止", "{code} ({source}), ended on {end}"),
    "lapsed_term_short": (
        "{code}({source}),期限{start}至{end}不足6个月",
        "{code} ({source}), term {start} to {end} is under 6 months",
    ),
    "lapsed_not_yet": (
        "{code}({source}),自{start}起,满6个月即{counts_from}起方可认定",
        "{code} ({source}) since {start}, counts only from {counts_from}",
    ),
    "lapsed_not_started": (
        "{code}({source}),始于{start},晚于评估日期",
        "{code} ({source}) begins on {start}, after the evaluation date",
    ),
    "lapsed_grade": (
        "{code}({source}),{grade},不属于重残",
        "{code} ({source}), {grade}, not a severe disability",
    ),
    # -- a parent --
    "parent_fact": ("{role}:{fact}", "{role}: {fact}"),
    "parent_no_evidence": (
        "{role}:无部门报告任何情形",
        "{role}: no circumstance reported by any source",
    ),
    "parent_unknown": (
        "{role}:花名册无身份证号,情况不明",
        "{role}: no ID number on the roster (unknown parent)",
    ),
    "parent_invalid_id": (
        "{role}:{column}无效({problem}),按情况不明处理",
        "{role}: the ID number in column {column} is invalid ({problem}); treated as unknown",
    ),
    "conflict": (
        "{role}:数据相互矛盾,{gone},但{custody}在{as_of}仍在执行;请反馈数据提供部门疑义校核",
        "{role}: conflicting records: {gone}, yet {custody} is in force on {as_of}; "
        "feed back to the providers for checking (疑义校核)",
    ),
    # -- the child --
    "child_invalid_id": (
        "{column}无效({problem}),请核对后重新评估",
        "column {column}: invalid identity number ({problem}); correct it and evaluate again",
    ),
    "child_no_birth_date": (
        "无法确定出生日期,请核对花名册",
        "the birth date is unknown; check the roster",
    ),
    "adult": (
        "已于{birthday}年满18周岁(自{adult_from}起视为成年)",
        "turned 18 on {birthday} (adult from {adult_from})",
    ),
    "child_dead": ("儿童本人:{fact}", "child: {fact}"),
    "stops_from": (
        "自{stop}起停发(次月起)",
        "support stops from {stop} (the month after the change)",
    ),
    "foundling": (
        "弃婴,查找不到生父母,按孤儿认定",
        "a foundling whose parents cannot be found: an orphan",
    ),
    # -- the category and the decision --
    "meets_category": ("符合{category}认定条件", "meets the category {category}"),
    "reclassified": ("原认定为{old},现符合{new}", "recorded as {old}, now meets {new}"),
    "no_category": (
        "不符合孤儿或事实无人抚养儿童认定条件",
        "meets neither the orphan nor the de facto unsupported category",
    ),
    "no_longer": (
        "不再符合{old}认定条件:{since}起条件不再成立",
        "no longer meets the category {old}: the basis ceased on {since}",
    ),
    "no_longer_undated": (
        "不再符合{old}认定条件(截至{as_of})",
        "no longer meets the category {old} (as of {as_of})",
    ),
    "evidence_unavailable": (
        "证据不全:以下数据源本轮未能查询({sources}),校核期间照常保障",
        "evidence unavailable: these sources failed this round ({sources}); "
        "support continues meanwhile",
    ),
    "dispute_open": (
        "疑义校核中:{source}的记录已反馈数据提供部门核查(疑义编号 {dispute}),校核期间照常保障",
        "疑义校核中 (under check): a record of {source} is disputed with its provider "
        "(dispute {dispute}); support continues meanwhile",
    ),
    "evidence_unavailable_candidate": (
        "证据不全:以下数据源本轮未能查询({sources})",
        "evidence unavailable: these sources failed this round ({sources})",
    ),
    # -- periodic checks --
    "check_every": ("每{months}个月核查一次({codes})", "checked every {months} months ({codes})"),
    "check_new": (
        "新纳入,自评估日期{as_of}起算",
        "newly enrolled: counted from the evaluation date {as_of}",
    ),
    "check_none_recorded": ("无核查记录,应立即核查", "no check on record: due now"),
    "check_review": (
        "待人工复核,按最短周期(6个月)核查",
        "under review: the shortest interval (6 months) applies",
    ),
}

_CIRCUMSTANCE_ZH = {
    Circumstance.DEAD: "死亡",
    Circumstance.MISSING: "失踪",
    Circumstance.SEVERE_DISABILITY: "重残",
    Circumstance.SEVERE_ILLNESS: "重病",
    Circumstance.IMPRISONED: "服刑在押",
    Circumstance.DRUG_REHAB: "强制隔离戒毒",
    Circumstance.OTHER_RESTRICTION: "被执行其他限制人身自由的措施",
    Circumstance.LOST_CONTACT: "失联",
    Circumstance.GUARDIANSHIP_REVOKED: "被撤销监护资格",
    Circumstance.DEPORTED: "被遣送(驱逐)出境",
    Circumstance.SERVICE: "服务覆盖",
}
_ROLE = {
    Role.FATHER: ("父亲", "father"),
    Role.MOTHER: ("母亲", "mother"),
    Role.CHILD: ("儿童", "child"),
}
_CATEGORY = {
    Category.ORPHAN: ("孤儿", "orphan"),
    Category.DE_FACTO: ("事实无人抚养儿童", "de facto unsupported child"),
}
#: disability categories of the certificate (data-contracts.md)
DISABILITY_ZH = {1: "视力", 2: "听力", 3: "言语", 4: "肢体", 5: "智力", 6: "精神", 7: "多重"}
_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DECISION = {
    Decision.ENROL: ("新纳入", "enrol"),
    Decision.CONTINUE: ("继续保障", "continue"),
    Decision.RECLASSIFY: ("变更类别", "reclassify"),
    Decision.EXIT: ("退出保障", "exit"),
    Decision.REVIEW: ("人工复核", "review"),
    Decision.NOT_ELIGIBLE: ("不符合条件", "not eligible"),
}


#: the English messages of ``coordinator.records`` for an invalid identity number, in Chinese
ID_PROBLEMS_ZH = {
    "wrong length for an identity number": "位数不对",
    "the check character does not match": "校验码不符",
    "impossible birth date in the identity number": "出生日期不存在",
    "birth date in the identity number is in the future": "出生日期晚于评估日期",
    "identity number in scientific notation (a spreadsheet lost its digits)": (
        "被电子表格存成科学计数法,后几位已丢失"
    ),
    "characters other than digits and a final X in the identity number": (
        "含有数字和末位X以外的字符"
    ),
    "empty identity number": "为空",
    (
        "ends in 000, as the numbers of this column that a spreadsheet cut to 15 digits do "
        "(store identity numbers as text and export again)"
    ): "末三位为000,与本列中被电子表格截成15位的号码相同(请以文本格式存储号码后重新导出)",
}
#: roster columns that hold identity numbers, as a Chinese reason names them
ID_COLUMNS_ZH = {
    "child_id": "儿童身份证号",
    "father_id": "父亲身份证号",
    "mother_id": "母亲身份证号",
}


def circumstance_name(code: Circumstance, lang: Lang) -> str:
    """情形 name (zh) or the code (en)."""
    return _CIRCUMSTANCE_ZH[code] if lang == "zh" else code.value


def category_name(category: Category, lang: Lang) -> str:
    """孤儿 / 事实无人抚养儿童, or the English name."""
    return _CATEGORY[category][0 if lang == "zh" else 1]


def decision_name(decision: Decision, lang: Lang) -> str:
    """A short label for a decision (新纳入 / enrol ...)."""
    return _DECISION[decision][0 if lang == "zh" else 1]


_STATUS = {Status.SUPPORTED: ("在保", "supported"), Status.CANDIDATE: ("待认定", "candidate")}


def status_name(status: Status, lang: Lang) -> str:
    """The roster status: 在保 (supported) / 待认定 (candidate), or the English."""
    return _STATUS[status][0 if lang == "zh" else 1]


def month_text(month: Month, lang: Lang) -> str:
    """2026年11月 / November 2026."""
    if lang == "zh":
        return f"{month.year}年{month.month}月"
    return f"{_MONTHS_EN[month.month - 1]} {month.year}"


@lru_cache(maxsize=1 << 14)  # a round writes few distinct dates, many times each
def _date_zh(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def date_text(day: date, lang: Lang) -> str:
    """2026年10月10日 / 2026-10-10."""
    return _date_zh(day) if lang == "zh" else day.isoformat()


def _role_names(index: int) -> dict[Role, str]:
    return {role: names[index] for role, names in _ROLE.items()}


#: per language (0 zh, 1 en): argument type -> its text. The type must match exactly (a
#: nested reason is rendered, any other type written with ``str``): a StrEnum is a str.
_LOCALIZERS: tuple[dict[type, Callable[[Any], str]], dict[type, Callable[[Any], str]]] = (
    {
        str: str,
        RosterColumn: lambda value: ID_COLUMNS_ZH.get(value.name, value.name),
        IdProblem: lambda value: ID_PROBLEMS_ZH.get(value.message, "不符合国家标准"),
        Circumstance: _CIRCUMSTANCE_ZH.__getitem__,
        Role: _role_names(0).__getitem__,
        Category: {category: names[0] for category, names in _CATEGORY.items()}.__getitem__,
        Decision: {decision: names[0] for decision, names in _DECISION.items()}.__getitem__,
        Month: lambda value: month_text(value, "zh"),
        date: _date_zh,
        DisabilityCategory: lambda value: DISABILITY_ZH.get(value.number, str(value.number)),
        tuple: "、".join,
    },
    {
        str: str,
        RosterColumn: operator.attrgetter("name"),
        IdProblem: operator.attrgetter("message"),
        Circumstance: operator.attrgetter("value"),
        Role: _role_names(1).__getitem__,
        Category: {category: names[1] for category, names in _CATEGORY.items()}.__getitem__,
        Decision: {decision: names[1] for decision, names in _DECISION.items()}.__getitem__,
        Month: lambda value: month_text(value, "en"),
        date: date.isoformat,
        DisabilityCategory: lambda value: str(value.number),
        tuple: ", ".join,
    },
)
#: per language (0 zh, 1 en): template key -> template
_TEMPLATES_IN: tuple[dict[str, str], dict[str, str]] = (
    {key: texts[0] for key, texts in TEMPLATES.items()},
    {key: texts[1] for key, texts in TEMPLATES.items()},
)


#: reason arguments that name match sets (``node/set``): one set, or a tuple of them
_SOURCE_ARGS = frozenset({"source", "sources"})


def render(item: Reason, lang: Lang = "zh", names: Mapping[str, str] | None = None) -> str:
    """The text of ``item`` in ``lang``.

    ``names`` maps ``node/set`` to the name people know the set by (the
    display names the nodes announced, :mod:`coordinator.names`); a set it
    does not hold is named ``node/set``. Only Chinese text takes it: English
    reasons name sets ``node/set``, as evidence.csv does.

    Raises:
        KeyError: the template key or one of its placeholders is missing (a bug).
    """
    index = 0 if lang == "zh" else 1
    template = _TEMPLATES_IN[index][item.key]
    localizers = _LOCALIZERS[index]
    shown = names if names and index == 0 else None
    # one loop and bound C methods rather than a helper per argument: those calls were
    # most of the time of rendering a round
    args: dict[str, str] = {}
    for name, value in item.args:
        if shown is not None and name in _SOURCE_ARGS:
            if isinstance(value, str):
                args[name] = shown.get(value, value)
                continue
            if isinstance(value, tuple):
                args[name] = "、".join([shown.get(v, v) for v in value])
                continue
        localize = localizers.get(type(value))
        if localize is not None:
            args[name] = localize(value)
        elif isinstance(value, Reason):
            args[name] = render(value, lang, shown)
        else:
            args[name] = str(value)
    return template.format_map(args)


class Renderer:
    """:func:`render` in one language with one set of display names, each reason object once.

    A round repeats many reasons (父亲:无部门报告任何情形, the month support
    stops...): the rules build those once and share the object
    (``coordinator.eligibility.shared_reason``), so they are found here by
    identity. Identity rather than value: hashing every reason (nested tuples
    of dates) cost as much as rendering the ones that repeat.
    """

    __slots__ = ("_lang", "_lists", "_names", "_texts")

    def __init__(self, lang: Lang = "zh", names: Mapping[str, str] | None = None) -> None:
        self._lang: Lang = lang
        self._names = names
        #: id of a reason -> (the reason, kept alive so that its id stays its own; its text)
        self._texts: dict[int, tuple[Reason, str]] = {}
        #: the same for whole tuples of reasons (children alike share theirs)
        self._lists: dict[int, tuple[tuple[Reason, ...], list[str]]] = {}

    def __call__(self, item: Reason) -> str:
        """The text of ``item``."""
        found = self._texts.get(id(item))
        if found is not None:
            return found[1]
        text = render(item, self._lang, self._names)
        self._texts[id(item)] = (item, text)
        return text

    def texts(self, items: tuple[Reason, ...]) -> list[str]:
        """The texts of ``items``, a new list."""
        found = self._lists.get(id(items))
        if found is None:
            found = self._lists[id(items)] = (items, list(map(self, items)))
        return list(found[1])
