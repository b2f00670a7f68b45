"""The ledger's records and pages (core.ledger), the archive's judgement (core.archive_check)."""

from __future__ import annotations

import json

import pytest

from tasks.core.archive_check import (
    Kind,
    Seen,
    check_bytes,
    check_object,
    check_range,
    verified_end,
)
from tasks.core.ledger import (
    LedgerEntry,
    WalFacts,
    build_page,
    decode,
    encode,
    merge,
    page_key,
    parse_page,
    parse_page_name,
    wal_facts,
)
from tasks.core.walpage import LongHeader, make_page_header
from tasks.errors import InvalidInput

SEG = 16 << 20
TTID = "a" * 32 + "/" + "b" * 32
FACTS = WalFacts(15, 1, 2**64 - 1, 8192)  # a system id beyond JSON's exact integers
ENTRY = LedgerEntry(SEG, "5" * 64, "d" * 32, FACTS)


def test_entries_round_trip_through_redis_and_pages() -> None:
    assert decode(encode(ENTRY)) == ENTRY
    recovered = LedgerEntry(SEG, "6" * 64, "", None, source="recovered")
    assert decode(encode(recovered)) == recovered
    assert json.loads(encode(ENTRY))["wal"]["sysid"] == str(2**64 - 1)
    page = build_page(TTID, SEG, {3: ENTRY, 4: recovered}, written_by=2, at="2026-12-03T00:00:00Z")
    assert parse_page(page, TTID, SEG) == {3: ENTRY, 4: recovered}


@pytest.mark.parametrize("text", ["", "{", "[]", '{"size": 1}', "d41d8cd98f00b204e9800998ecf8427e"])
def test_unreadable_redis_values_are_no_entry(text: str) -> None:
    assert decode(text) is None


def test_pages_are_checked_against_their_timeline() -> None:
    page = build_page(TTID, SEG, {3: ENTRY}, written_by=1, at="t")
    with pytest.raises(InvalidInput, match="written for timeline"):
        parse_page(page, "c" * 32 + "/" + "b" * 32, SEG)
    with pytest.raises(InvalidInput, match="wal_seg_size"):
        parse_page(page, TTID, SEG * 2)
    with pytest.raises(InvalidInput, match="not JSON"):
        parse_page(b"{", TTID, SEG)
    with pytest.raises(InvalidInput, match="unknown version"):
        parse_page(page.replace(b'"version": 1', b'"version": 9'), TTID, SEG)


def test_page_names() -> None:
    key = page_key("t/l/", 1, 0x100, SEG)
    assert key == "t/l/_ledger/000000010000000000000001-000000010000000100000000.json"
    assert parse_page_name(key.rsplit("/", 1)[1], SEG) == (1, 0x100)
    for bad in ("x.json", "000000010000000000000002-000000010000000000000001.json", "a-b.json"):
        assert parse_page_name(bad, SEG) is None


def test_merge_reports_pages_that_disagree() -> None:
    other = LedgerEntry(SEG, "7" * 64, "d" * 32, FACTS)
    same_bytes_other_facts = LedgerEntry(SEG, "5" * 64, "", None, source="recovered")
    merged, conflicts = merge([{1: ENTRY, 2: ENTRY}, {2: same_bytes_other_facts}, {1: other}])
    assert merged == {1: ENTRY, 2: ENTRY} and conflicts == [1]


def test_wal_facts_come_from_a_long_page_header() -> None:
    first = LongHeader(0xD110, 1, 5 * SEG, 123456789, SEG, 8192)
    header = make_page_header(first, 5 * SEG)
    assert wal_facts(header, 5 * SEG, SEG) == WalFacts(15, 1, 123456789, 8192)
    assert wal_facts(header, 6 * SEG, SEG) is None
    assert wal_facts(b"\x00" * 40, 5 * SEG, SEG) is None


def test_check_object_names_what_is_wrong() -> None:
    assert check_object(1, SEG, Seen(SEG, "d" * 32), ENTRY) is None
    # A multipart ETag: no upload of ours (one part each), evidence to read back.
    multipart = check_object(1, SEG, Seen(SEG, "abc-2"), ENTRY)
    assert multipart is not None and multipart.kind is Kind.CHANGED
    assert "multipart" in multipart.detail
    assert check_object(1, SEG, Seen(SEG, None), ENTRY) is None  # file://: sizes only
    cases = {
        Kind.MISSING: (None, ENTRY),
        Kind.SIZE: (Seen(100, "d" * 32), ENTRY),
        Kind.CHANGED: (Seen(SEG, "e" * 32), ENTRY),
        Kind.UNRECORDED: (Seen(SEG, None), None),
    }
    for kind, (seen, entry) in cases.items():
        problem = check_object(1, SEG, seen, entry)
        assert problem is not None and problem.kind is kind, kind
        assert problem.name == "000000010000000000000001"
    short = check_object(2, SEG, Seen(7, None), None)
    assert short is not None and short.kind is Kind.SIZE and "7 bytes" in short.detail


def test_check_range_and_the_verified_end() -> None:
    objects = {s: Seen(SEG, "d" * 32) for s in range(1, 10) if s != 4}
    ledger = {s: ENTRY for s in range(1, 10)}
    problems = check_range(1, 10, SEG, objects, ledger)
    assert [(p.segno, p.kind) for p in problems] == [(4, Kind.MISSING)]
    assert verified_end(1, 10, problems) == 4
    assert verified_end(1, 10, []) == 10
    assert verified_end(5, 10, problems) == 10  # a problem below the start does not count
    bad = check_bytes(3, SEG, "0" * 64, ENTRY)
    assert bad is not None and bad.kind is Kind.CORRUPT and "0" * 64 in bad.detail
    assert check_bytes(3, SEG, "5" * 64, ENTRY) is None


def test_the_deep_budget_is_a_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.archive import scrubber

    now = [100.0]
    monkeypatch.setattr(scrubber.time, "monotonic", lambda: now[0])
    budget = scrubber.DeepBudget(10)
    assert not budget.take(5)  # starts empty
    now[0] += 1.0
    assert budget.take(5) and budget.take(5) and not budget.take(1)
    now[0] += 3600.0  # holds a minute's worth at most
    assert budget.take(600) and not budget.take(1)
    assert not scrubber.DeepBudget(0).take(0)  # 0: off
