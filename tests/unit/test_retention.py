"""tasks.core.retention: what retain and delete remove, in which order, and the retained marker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.lsn import Lsn
from tasks.core.partials import partial_object
from tasks.core.retention import (
    RETAINED_MARKER,
    ArchivedObject,
    Kind,
    archived_object,
    marker_bytes,
    parse_before,
    parse_marker,
    retain_limit,
    summarize,
    to_retain,
)
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput

SEG = 16 << 20


def name(segno: int) -> str:
    return xlog_file_name(segno, SEG)


def partial(segno: int, offset: int = 0x1234) -> str:
    return partial_object(segno, Lsn(segno * SEG + offset), SEG).name


def archive(segnos: range, partials: tuple[int, ...] = ()) -> list[ArchivedObject]:
    names = [name(s) for s in segnos] + [partial(s) for s in partials]
    names += [RETAINED_MARKER, "_ledger/000000010000000000000001", "00000002.history"]
    return [archived_object(n, SEG, SEG) for n in sorted(names)]


def test_objects_are_classified() -> None:
    assert archived_object(name(7), SEG, SEG) == ArchivedObject(name(7), SEG, Kind.SEGMENT, 7)
    assert archived_object(partial(7), SEG, SEG).kind is Kind.PARTIAL
    assert archived_object(partial(7), SEG, SEG).segno == 7
    for other in (RETAINED_MARKER, "_ledger/x", "00000002.history", "000000020000000000000001"):
        assert archived_object(other, 10, SEG) == ArchivedObject(other, 10, Kind.OTHER, None)


def test_key_order_is_segment_order_with_metadata_last() -> None:
    """Deleting in key order is deleting lowest segment first, ``_…`` last."""
    objects = archive(range(1, 300), partials=(5, 299))
    segnos = [o.segno for o in objects if o.segno is not None]
    assert segnos == sorted(segnos)
    assert [o.name for o in objects][-2:] == ["_ledger/000000010000000000000001", RETAINED_MARKER]


def test_before_an_lsn_keeps_the_segment_holding_it() -> None:
    assert parse_before("0/5000000", SEG) == 5  # segments 0..4 end at or before it
    assert parse_before("0/5800000", SEG) == 5
    assert parse_before("1/0", SEG) == 256
    assert parse_before(name(9), SEG) == 9
    for bad in ("5000000", "0/5G", "000000010000000000000100", name(10).lower(), ""):
        with pytest.raises(InvalidInput, match="--before"):
            parse_before(bad, SEG)
    with pytest.raises(InvalidInput, match="timeline 1 only"):
        parse_before("000000020000000000000009", SEG)


def test_limit_keeps_backup_lsns_segment_and_the_ones_below() -> None:
    assert retain_limit(Lsn(10 * SEG), SEG, 1) == 9
    assert retain_limit(Lsn(10 * SEG + 5), SEG, 1) == 9
    assert retain_limit(Lsn(10 * SEG), SEG, 3) == 7
    assert retain_limit(Lsn(SEG), SEG, 5) == 0
    with pytest.raises(InvalidInput):
        retain_limit(Lsn(10 * SEG), SEG, 0)


def test_retain_takes_segments_and_their_partials_below_the_cutoff_only() -> None:
    objects = archive(range(1, 20), partials=(3, 12))
    chosen = to_retain(objects, 12)
    assert [o.name for o in chosen] == sorted(
        [name(s) for s in range(1, 12)] + [partial(3)]
    )  # partial(12) is the kept segment's; metadata and history stay
    summary = summarize(chosen)
    assert (summary.segments, summary.partials, summary.other) == (11, 1, 0)
    assert (summary.first_segno, summary.last_segno, summary.bytes) == (1, 11, 12 * SEG)
    assert summary.as_dict(SEG)["first_segment"] == name(1)


@given(
    present=st.lists(st.integers(0, 400), max_size=60),
    backup_segno=st.integers(0, 400),
    keep=st.integers(1, 10),
    asked=st.integers(0, 500),
)
def test_nothing_at_or_above_the_limit_is_ever_retained(
    present: list[int], backup_segno: int, keep: int, asked: int
) -> None:
    """Whatever is asked, clamped to the limit as the command refuses above it."""
    objects = [archived_object(name(s), SEG, SEG) for s in set(present)]
    objects += [archived_object(partial(s), SEG, SEG) for s in set(present)]
    limit = retain_limit(Lsn(backup_segno * SEG + 7), SEG, keep)
    chosen = to_retain(objects, min(asked, limit))
    assert all(o.segno is not None and o.segno < backup_segno - keep + 1 for o in chosen)
    assert all(o.segno is not None and o.segno < min(asked, limit) for o in chosen)
    assert len(chosen) == 2 * len({s for s in present if s < min(asked, limit)})


def test_the_marker_round_trips_and_refuses_garbage() -> None:
    data = marker_bytes(Lsn(0x12 * SEG), SEG)
    assert parse_marker(data) == Lsn(0x12 * SEG)
    assert b'"first_segment":"000000010000000000000012"' in data
    for bad in (b"", b"{}", b"[]", b'{"archive_start_lsn": "x"}', b"\xff"):
        with pytest.raises(InvalidInput, match="_retained"):
            parse_marker(bad)


def test_an_empty_summary() -> None:
    summary = summarize([])
    assert summary.objects == 0 and summary.first_segno is None
    assert summary.as_dict(SEG)["first_segment"] is None
