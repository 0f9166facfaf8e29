"""Loading match sets with DuckDB: where/$as_of, encodings, ID normalization, errors."""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nodes.config import NodeConfig, load_node_config
from nodes.matchsets import MatchSetStore, detect_encoding, load_match_set
from psi.errors import ConfigError
from psi.identifiers import check_character, encode_identities
from runtime.csv_faults import NOT_CLOSED
from tests import configs
from tests.configs import put

AS_OF = _dt.date(2026, 11, 29)


def ident(body17: str) -> str:
    return body17 + check_character(body17)


A = ident("15080219800101001")  # check character computed
B = ident("15020119751231002")
C = ident("15290219900615003")
X_ID = next(
    ident(f"150802198001010{n:02d}")
    for n in range(100)
    if ident(f"150802198001010{n:02d}").endswith("X")
)
OLD15 = "150802800101011"  # 15-digit form of 1508021980010101 1 + check
OLD15_AS_18 = ident("15080219800101011")


def config(tmp_path: Path, source: str, *, where: str | None, payload: list[str]) -> NodeConfig:
    for rel in ("ca.crt", "n.crt", "n.key"):
        (tmp_path / rel).write_text("x")
    where_line = f"where = {json.dumps(where, ensure_ascii=False)}\n" if where is not None else ""
    (tmp_path / "node.toml").write_text(
        f"""
[node]
name = "justice"
listen = "127.0.0.1:50061"
ca = "ca.crt"
cert = "n.crt"
key = "n.key"
audit_log = "audit.jsonl"

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "{source}"
id_column = "id_number"
{where_line}payload = {json.dumps(payload)}
protocols = ["keyed-hash"]
allow = [{{ requester = "civil-affairs", purposes = ["eligibility-review"] }}]
""",
        encoding="utf-8",
    )
    return load_node_config(tmp_path / "node.toml")


def write_csv(path: Path, rows: list[str], encoding: str = "utf-8") -> None:
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))


CUSTODY = [
    "id_number,name,term_months,start_date,end_date",
    f"{A},张三,12,2025-02-01,2029-02-01",
    f"{B},李四,3,2026-01-01,2026-04-01",  # term too short
    f"{C},王五,24,2020-01-01,2026-10-10",  # released before AS_OF
    f"{X_ID.lower()},巴特尔,8,2026-06-01,",  # open end, lower-case x
]
WHERE = "term_months >= 6 AND start_date <= $as_of AND (end_date IS NULL OR end_date > $as_of)"


def as_set(identities: np.ndarray) -> set[bytes]:
    return {bytes(r) for r in identities}


def test_where_with_as_of_and_payload(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", CUSTODY)
    cfg = config(tmp_path, "custody.csv", where=WHERE, payload=["start_date", "end_date"])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, X_ID]))
    rows = {bytes(loaded.identities[i]): i for i in range(len(loaded))}
    i = rows[bytes(encode_identities([X_ID])[0])]
    assert loaded.payload["start_date"][i] == "2026-06-01" and loaded.payload["end_date"][i] == ""
    j = rows[bytes(encode_identities([A])[0])]
    assert loaded.payload["end_date"][j] == "2029-02-01"
    # an earlier date: C was still in custody, X_ID not yet
    earlier = load_match_set(cfg, "custody", _dt.date(2025, 6, 1))
    assert as_set(earlier.identities) == as_set(encode_identities([A, C]))
    assert earlier.rejected == {}


def test_gb18030_detected_and_transcoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a temp folder of this test's own: another worker may be transcoding in /tmp now
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    write_csv(tmp_path / "custody.csv", CUSTODY, encoding="gb18030")
    assert detect_encoding(tmp_path / "custody.csv") == "gb18030"
    cfg = config(tmp_path, "custody.csv", where="name = '张三' OR name = '巴特尔'", payload=[])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, X_ID]))
    assert not list(private.iterdir())  # the transcoded copy is gone


def test_utf8_with_bom(tmp_path: Path) -> None:
    (tmp_path / "custody.csv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(CUSTODY) + "\n").encode())
    assert detect_encoding(tmp_path / "custody.csv") == "utf-8"
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    assert len(load_match_set(cfg, "custody", AS_OF)) == 4


def test_ids_normalized_and_invalid_rows_counted(tmp_path: Path) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in A)  # Ｆｕｌｌ-width digits
    rows = [
        "id_number,term_months",
        f"{OLD15},12",
        f"{full_width},12",
        f" {B[:6]}-{B[6:]} ,12",
        f"{X_ID[:-1]}x,12",
        f"{C[:-1]}{'0' if C[-1] != '0' else '1'},12",  # wrong check character
        "1.50802E+17,12",
        "12345,12",
        ",12",
    ]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([OLD15_AS_18, A, B, X_ID]))
    assert loaded.rows_selected == 8
    assert loaded.rejected == {"check": 1, "scientific_notation": 1, "length": 1, "empty": 1}


def test_numbers_a_spreadsheet_cut_to_15_digits_are_counted_and_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ID column stored as numbers in a spreadsheet keeps 15 digits (…000). The numbers
    whose check fails are counted as cut_digits, not as typos, and the node says what
    happened at startup: the few cut numbers that pass their check name someone else."""
    from nodes.server import _validate_match_sets

    real = [ident(f"150201197505{day:02d}{day:03d}") for day in range(1, 29)]
    cut = [r[:15] + "000" for r in real]
    kept = [c for c in cut if c == ident(c[:17])]  # passes its check (about 1 in 11)
    typo = C[:-1] + ("0" if C[-1] != "0" else "1")
    write_csv(
        tmp_path / "custody.csv", ["id_number,term_months", *(f"{c},12" for c in cut), f"{typo},12"]
    )
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    loaded = load_match_set(cfg, "custody", AS_OF)
    failed = len(cut) - len(kept)
    assert failed > 0 and kept  # both kinds in these 28
    assert loaded.rejected == {"cut_digits": failed, "check": 1}
    assert len(loaded) == len(kept)
    _validate_match_sets(cfg, MatchSetStore(cfg))
    err = capsys.readouterr().err
    assert f"{failed + 1} row(s) dropped (check: 1, cut_digits: {failed})" in err
    assert "cut them to 15 digits" in err and "store the numbers as text" in err
    assert not any(c in err for c in cut)


def test_leading_zero_and_x_survive_type_detection(tmp_path: Path) -> None:
    # A column of digits would be sniffed as BIGINT; the id column is forced to text.
    rows = ["id_number,term_months", f"{A},12", f"{B},12", f"{X_ID},12"]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    assert as_set(load_match_set(cfg, "custody", AS_OF).identities) == as_set(
        encode_identities([A, B, X_ID])
    )


def test_malformed_payload_dates_are_counted(tmp_path: Path) -> None:
    rows = ["id_number,end_date", f"{A},2029-02-01", f"{B},someday", f"{C},"]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=["end_date"])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, C]))
    assert loaded.rejected == {"payload_end_date": 1}


def test_all_empty_payload_date_column_compares_with_as_of(tmp_path: Path) -> None:
    """DuckDB reads an all-empty column as text; a payload date column is read as DATE."""
    rows = ["id_number,start_date,end_date", f"{A},2025-02-01,", f"{B},2026-12-01,"]
    write_csv(tmp_path / "custody.csv", rows)
    where = "start_date <= $as_of AND (end_date IS NULL OR end_date > $as_of)"
    cfg = config(tmp_path, "custody.csv", where=where, payload=["start_date", "end_date"])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A]))
    assert loaded.payload["end_date"].tolist() == [""] and loaded.rejected == {}


def test_text_date_column_with_a_non_date_stays_text(tmp_path: Path) -> None:
    """No DATE hint when a cell is not a date: its row is dropped, the value never shown."""
    rows = ["id_number,end_date", f"{A},", f"{B},someday", f"{C},   "]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=["end_date"])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, C]))
    assert loaded.rejected == {"payload_end_date": 1}
    # `where` comparing it with a date still needs the CAST, and says so
    bad = config(tmp_path, "custody.csv", where="end_date > $as_of", payload=["end_date"])
    with pytest.raises(ConfigError, match="explicit cast"):
        load_match_set(bad, "custody", AS_OF)


def test_parquet_source(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id_number": [A, B, C],
            "disability_category": [5, 4, 1],
            "disability_grade": [3, 2, 4],
            "start_date": [_dt.date(2020, 1, 1), _dt.date(2018, 5, 2), _dt.date(2010, 1, 1)],
        }
    )
    pq.write_table(table, tmp_path / "dpf.parquet")
    where = (
        "start_date <= $as_of AND start_date + INTERVAL 10 YEAR > $as_of AND "
        "(disability_grade <= 2 OR disability_category IN (5, 6))"
    )
    cfg = config(
        tmp_path,
        "dpf.parquet",
        where=where,
        payload=["start_date", "disability_category", "disability_grade"],
    )
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, B]))
    assert sorted(loaded.payload["disability_grade"].tolist()) == ["2", "3"]


def test_parquet_integer_id_column_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id_number": [int(A)]}), tmp_path / "x.parquet")
    cfg = config(tmp_path, "x.parquet", where=None, payload=[])
    with pytest.raises(ConfigError, match="store identity numbers as text"):
        load_match_set(cfg, "custody", AS_OF)


@pytest.mark.parametrize(
    ("where", "payload", "message"),
    [
        ("nonexistent > 1", [], "where: Binder Error: Referenced column"),
        ("term_months >=", [], "where: Parser Error"),
        (None, ["disability_grade"], "payload column 'disability_grade' not found"),
    ],
)
def test_sql_and_column_errors_name_the_match_set(
    tmp_path: Path, where: str | None, payload: list[str], message: str
) -> None:
    write_csv(tmp_path / "custody.csv", CUSTODY)
    cfg = config(tmp_path, "custody.csv", where=where, payload=payload)
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    line = info.value.diagnostics()
    assert line.startswith(f"{cfg.path}: match_sets[0] ('custody'): ") and message in line, line


def test_missing_id_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", ["person,term_months", f"{A},1"])
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    with pytest.raises(ConfigError, match=r"id_column 'id_number' not found in custody.csv"):
        load_match_set(cfg, "custody", AS_OF)


def test_a_header_only_csv_says_so(tmp_path: Path) -> None:
    """Every column of a header-only CSV reads as text, so ``where`` failed on its types
    ("Cannot compare values of type VARCHAR..."), which hid the real problem."""
    write_csv(tmp_path / "custody.csv", CUSTODY[:1])
    cfg = config(tmp_path, "custody.csv", where=WHERE, payload=["start_date", "end_date"])
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.diagnostics().endswith("custody.csv has a header and no rows")


def _quoted(rows: list[str]) -> list[str]:
    """``rows`` with every data cell quoted, as some exports write them (header plain)."""
    return [rows[0], *(",".join(f'"{cell}"' for cell in row.split(",")) for row in rows[1:])]


@pytest.mark.parametrize(
    ("broken", "line", "message"),
    [
        # the quote of the second row's number never closes
        (
            lambda rows: [rows[0], rows[1], '"' + rows[2].replace('"', ""), *rows[3:]],
            3,
            NOT_CLOSED,
        ),
        # a stray quote inside a quoted field, not doubled
        (lambda rows: [rows[0], rows[1].replace("张三", 'Zhang"san'), *rows[2:]], 2, NOT_CLOSED),
        # one field too many
        (
            lambda rows: [*rows[:3], rows[3] + ',"x"', *rows[4:]],
            4,
            "expected 5 fields as in the header, found 6",
        ),
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "gb18030"])
@pytest.mark.parametrize("at_end", [False, True])
@pytest.mark.parametrize("where", [WHERE, None])
def test_a_broken_csv_row_is_named_by_line_and_loses_nothing(
    tmp_path: Path,
    broken: object,
    line: int,
    message: str,
    encoding: str,
    at_end: bool,
    where: str | None,
) -> None:
    """A row whose quote does not close made DuckDB's sniffer choose "no quoting":
    every quoted number then read with its quotes and *every* row was dropped as
    invalid, a warning only. Now the file is refused, naming the line, and no value.
    ``at_end``: the broken row comes after DuckDB's sniffing sample (20,480 rows).
    Without ``where`` nothing else fails: this is the case that lost every row."""
    assert callable(broken)
    bad: list[str] = broken(_quoted(CUSTODY))
    if at_end:  # 21,900 good rows after the header move the fault down
        days = range(1, 366)
        filler = _quoted(
            [CUSTODY[0]]
            + [
                f"{ident(f'1508021980{d:03d}{n:04d}')},某,12,2025-02-01,"
                for d in days
                for n in range(60)
            ]
        )
        bad = [*filler, *bad[1:]]
        line += len(filler) - 1
    write_csv(tmp_path / "custody.csv", bad, encoding)
    payload = ["start_date", "end_date"] if where else []
    cfg = config(tmp_path, "custody.csv", where=where, payload=payload)
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    text = info.value.diagnostics()
    assert text.endswith(f"custody.csv:{line}: malformed CSV: {message}"), text
    assert "\n" not in text and A not in text and B not in text and "张三" not in text


def test_quoted_cells_read_as_plain_ones(tmp_path: Path) -> None:
    """A fully quoted export reads like the plain file (a guard: the quote DuckDB
    finds, or ``"`` where it finds none, must not change what a valid file gives)."""
    write_csv(tmp_path / "custody.csv", _quoted(CUSTODY))
    cfg = config(tmp_path, "custody.csv", where=WHERE, payload=["start_date", "end_date"])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, X_ID]))
    assert loaded.rejected == {}


@pytest.mark.parametrize(
    "rows",
    [
        # single quotes: DuckDB's sniffer finds them, and they are used
        ["id_number,term_months", f"'{A}','8'", f"'{B}','12'", f"'{C}','7'"],
        # a backslash escaping a quote (MySQL's export)
        ["id_number,note,term_months", f'{A},"5\\" screen",8', f"{B},x,12", f"{C},y,7"],
        # a trailing delimiter on every row
        ["id_number,term_months", f"{A},8,", f"{B},12,", f"{C},7,"],
    ],
    ids=["single-quotes", "backslash-escape", "trailing-delimiter"],
)
def test_other_quotings_still_read_every_row(tmp_path: Path, rows: list[str]) -> None:
    """What DuckDB read before the quote was fixed still reads: the quote is fixed to
    ``"`` only where DuckDB's sniffer finds none (a file quoted with ``'`` would
    otherwise keep its quotes, and every number would drop as invalid)."""
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where="term_months >= 6", payload=[])
    loaded = load_match_set(cfg, "custody", AS_OF)
    assert as_set(loaded.identities) == as_set(encode_identities([A, B, C]))
    assert loaded.rejected == {}


def test_a_where_typo_is_not_called_a_malformed_csv(tmp_path: Path) -> None:
    """Only DuckDB's CSV errors are looked up in the file; a ``where`` mistake is
    reported as DuckDB words it, even for a file our own scan would find fault with."""
    write_csv(tmp_path / "custody.csv", ["id_number,term_months", f"{A},8,", f"{B},12,"])
    cfg = config(tmp_path, "custody.csv", where="nosuchcol > 3", payload=[])
    with pytest.raises(ConfigError, match=r"where: Binder Error: Referenced column"):
        load_match_set(cfg, "custody", AS_OF)


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        # a ragged row in DuckDB's sample: its sniffer chose to skip the rows before it
        (["id_number,note", f"{A},a", f"{B},b", f"{C},c,d"], 4, "expected 2 fields"),
        # a line of blanks is a row of one field
        (["id_number,note", f"{A},a", "   ", f"{B},b"], 3, "expected 2 fields"),
    ],
)
def test_a_ragged_row_is_named_without_where(
    tmp_path: Path, rows: list[str], line: int, message: str
) -> None:
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    text = info.value.diagnostics()
    assert f"custody.csv:{line}: malformed CSV: {message}" in text, text
    assert A not in text and B not in text


def test_conversion_errors_never_quote_values(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", ["id_number,note", f"{A},{B}"])
    cfg = config(tmp_path, "custody.csv", where="CAST(note AS DATE) > $as_of", payload=[])
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    text = str(info.value)
    assert "details withheld" in text and B not in text and A not in text


def test_where_cannot_read_other_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", CUSTODY)
    write_csv(tmp_path / "secret.csv", ["a", "1"])
    where = "id_number IN (SELECT a FROM read_csv('secret.csv'))"
    cfg = config(tmp_path, "custody.csv", where=where, payload=[])
    with pytest.raises(ConfigError):
        load_match_set(cfg, "custody", AS_OF)


def test_store_caches_and_reloads_on_change(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", CUSTODY)
    cfg = config(tmp_path, "custody.csv", where=None, payload=[])
    store = MatchSetStore(cfg, capacity=2)
    first = store.get("custody", AS_OF)
    assert store.get("custody", AS_OF) is first
    write_csv(tmp_path / "custody.csv", [*CUSTODY, f"{OLD15_AS_18},1,x,2020-01-01,"])
    second = store.get("custody", AS_OF)
    assert second is not first and len(second) == len(first) + 1
    assert len(store.validate_all(AS_OF)) == 1


# --------------------------------------------------------------------------
# Streaming (sets above stream_rows)


def _streamed(cfg: NodeConfig, batch_rows: int) -> tuple[np.ndarray, dict[str, list[str]], object]:
    from nodes.matchsets import StreamSummary, stream_match_set

    summary = StreamSummary()
    batches = list(stream_match_set(cfg, "custody", AS_OF, batch_rows=batch_rows, summary=summary))
    offsets = [b.offset for b in batches]
    assert offsets == sorted(offsets) and offsets[0] == 0
    ids = np.concatenate([b.identities for b in batches])
    payload = {
        k: np.concatenate([b.payload[k] for b in batches]).tolist() for k in batches[0].payload
    }
    return ids, payload, summary


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 1000])
def test_stream_equals_full_load_csv(tmp_path: Path, batch_rows: int) -> None:
    rows = [
        "id_number,term_months,start_date,end_date",
        f"{A},12,2025-02-01,2029-02-01",
        f"{OLD15},12,2025-02-01,",
        "12345,12,2025-02-01,",
        f"{B},12,2025-02-01,someday",
        f"{X_ID.lower()},8,2026-06-01,",
        f"{A},7,2024-02-01,2027-01-01",
    ]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(
        tmp_path, "custody.csv", where="term_months >= 6", payload=["start_date", "end_date"]
    )
    full = load_match_set(cfg, "custody", AS_OF)
    ids, payload, summary = _streamed(cfg, batch_rows)
    assert ids.tolist() == full.identities.tolist()
    assert payload == {k: v.tolist() for k, v in full.payload.items()}
    loaded = summary.as_loaded("custody", AS_OF, 0.0)  # type: ignore[attr-defined]
    assert loaded.streamed and len(loaded) == len(full) == 4
    assert loaded.rows_selected == full.rows_selected == 6
    assert loaded.rejected == full.rejected == {"length": 1, "payload_end_date": 1}


def test_stream_equals_full_load_parquet(tmp_path: Path) -> None:
    ids = [A, B, C, X_ID, "bad", OLD15] * 3
    table = pa.table(
        {
            "id_number": ids,
            "disability_grade": [1, 2, 3, 4, 2, 1] * 3,
            "start_date": [_dt.date(2020, 1, 1 + i) for i in range(len(ids))],
        }
    )
    pq.write_table(table, tmp_path / "dpf.parquet")
    cfg = config(tmp_path, "dpf.parquet", where=None, payload=["start_date", "disability_grade"])
    full = load_match_set(cfg, "custody", AS_OF)
    got, payload, _ = _streamed(cfg, 4)
    assert got.tolist() == full.identities.tolist()
    assert payload == {k: v.tolist() for k, v in full.payload.items()}


def test_store_streams_sets_above_stream_rows(tmp_path: Path) -> None:
    write_csv(tmp_path / "custody.csv", CUSTODY)
    cfg = config(tmp_path, "custody.csv", where=WHERE, payload=["start_date"])
    assert not MatchSetStore(cfg).is_streamed("custody")  # default 5,000,000
    configs.edit_file(tmp_path / "node.toml", put("node.stream_rows", 3))
    cfg = load_node_config(tmp_path / "node.toml")
    store = MatchSetStore(cfg)
    assert store.is_streamed("custody")  # 4 source rows > 3
    (summary,) = store.validate_all(AS_OF)
    assert summary.streamed and len(summary) == 2 and len(summary.identities) == 0
    streamed = np.concatenate([b.identities for b in store.stream("custody", AS_OF)])
    assert as_set(streamed) == as_set(encode_identities([A, X_ID]))


def test_duckdb_never_spills_source_rows_to_disk(tmp_path: Path) -> None:
    """A query past the memory limit fails; it does not write temporary files."""
    import duckdb

    from nodes.matchset_files import connect

    source = tmp_path / "big.csv"
    source.write_text("id\n" + "".join(f"{i:018d}\n" for i in range(200_000)), encoding="utf-8")
    con = connect(source)
    try:
        assert con.execute("SELECT current_setting('temp_directory')").fetchone() == ("",)
        with pytest.raises(duckdb.InvalidInputException, match="configuration"):
            con.execute("SET temp_directory = '.tmp'")  # locked, also for a hostile `where`
        with pytest.raises(duckdb.OutOfMemoryException, match="no temporary directory"):
            # a sort far larger than the memory limit would have to spill
            con.execute(
                "SELECT a.id || b.id AS k FROM read_csv($p) a, read_csv($p) b ORDER BY k",
                {"p": str(source)},
            ).fetchall()
    finally:
        con.close()
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / ".tmp").exists()


@pytest.mark.parametrize(
    "where",
    [
        f"id_number = '{A}' '{B}'",  # a syntax error quoting the literal after the first
        f"x{A} > 1",  # a Binder error quoting the column it could not find
    ],
)
def test_sql_errors_withhold_identity_literals(tmp_path: Path, where: str) -> None:
    # DuckDB quotes the `where` near its error: a DBA's test literal must not reach stderr
    write_csv(tmp_path / "custody.csv", CUSTODY)
    cfg = config(tmp_path, "custody.csv", where=where, payload=[])
    with pytest.raises(ConfigError) as info:
        load_match_set(cfg, "custody", AS_OF)
    line = info.value.diagnostics()
    assert "where: " in line and "Error" in line, line
    assert A not in line and B not in line and A[:12] not in line and B[:12] not in line, line
    assert "(value not shown)" in line, line


def test_dropped_rows_are_named_by_line_never_by_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data contract: a rejected number is named by file, line and column. The node
    names the first lines of each reason (a count gives the rest), read whole or streamed."""
    from nodes.server import _validate_match_sets

    bad_check = C[:-1] + ("0" if C[-1] != "0" else "1")
    rows = [
        "id_number,term_months,end_date",
        f"{A},12,2029-02-01",  # line 2
        f"{bad_check},12,2029-02-01",  # line 3: check
        f"{B},3,2029-02-01",  # line 4 (not selected by the `where` below)
        "12345,12,2029-02-01",  # line 5: length
        f"{C},12,someday",  # line 6: payload_end_date
        *(f"{n},12,2029-02-01" for n in ("1", "22", "333", "4444")),  # lines 7-10: length
    ]
    write_csv(tmp_path / "custody.csv", rows)
    cfg = config(tmp_path, "custody.csv", where=None, payload=["end_date"])
    streamed = load_match_set(cfg, "custody", AS_OF)  # the streamed reading: rows of the result
    assert streamed.rows_of == "result"
    assert dict(streamed.dropped_rows) == {
        "check": (2,),
        "length": (4, 6, 7),
        "payload_end_date": (5,),
    }
    _validate_match_sets(cfg, MatchSetStore(cfg))  # the store reads a file whole: its lines
    err = capsys.readouterr().err
    assert (
        "justice: warning: match set 'custody': 7 row(s) dropped "
        "(check: 1, length: 5, payload_end_date: 1); first lines of custody.csv: "
        "check 3; length 5, 7, 8; payload_end_date 6 and more\n"
    ) in err, err
    assert bad_check not in err and "12345" not in err and "someday" not in err
    # with `where`: the whole file's lines still, and the streamed rows of the selection
    cfg = config(tmp_path, "custody.csv", where="term_months > 6", payload=["end_date"])
    assert dict(load_match_set(cfg, "custody", AS_OF).dropped_rows)["length"] == (3, 5, 6)
    _validate_match_sets(cfg, MatchSetStore(cfg))
    assert "check 3; length 5, 7, 8; payload_end_date 6 and more" in capsys.readouterr().err
