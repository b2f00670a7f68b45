"""SPEC §2 formats: LSNs, ids, segment names, and the purity of tasks.core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.ids import TenantTimelineId, is_hex_id
from tasks.core.lsn import LSN_MAX, Lsn
from tasks.core.segments import (
    SEGMENT_NAME_RE,
    parse_xlog_file_name,
    segments_per_xlogid,
    validate_seg_size,
    xlog_file_name,
)
from tasks.errors import InvalidInput

MiB = 1 << 20
GiB = 1 << 30
SEG_SIZES = [1 << bits for bits in range(20, 31)]
HEX32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


# -- LSN ---------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=LSN_MAX))
def test_lsn_text_round_trip(value: int) -> None:
    text = str(Lsn(value))
    assert Lsn.parse(text) == value
    hi, lo = text.split("/")
    assert hi == f"{value >> 32:X}" and lo == f"{value & 0xFFFFFFFF:X}"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/16B3748", 0x16B3748), ("0/0", 0), ("1/0", 1 << 32), ("FFFFFFFF/FFFFFFFF", LSN_MAX)],
)
def test_lsn_parse_postgres_forms(text: str, value: int) -> None:
    assert Lsn.parse(text) == value
    assert str(Lsn(value)) == text


def test_lsn_str_crosses_high_word() -> None:
    assert str(Lsn(0x1_0000_0000)) == "1/0"
    assert f"{Lsn(0x16B3748)}" == "0/16B3748"


@pytest.mark.parametrize("text", ["", "0", "0/", "/1", "G/1", "1/2/3", "123456789/0", " 0/1x"])
def test_lsn_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidInput, match="malformed LSN"):
        Lsn.parse(text)


@pytest.mark.parametrize("value", [-1, LSN_MAX + 1])
def test_lsn_range_enforced(value: int) -> None:
    with pytest.raises(InvalidInput):
        Lsn(value)


def test_lsn_subtraction_never_underflows() -> None:
    assert Lsn(5) - 3 == Lsn(2)
    assert Lsn(5).checked_sub(5) == Lsn(0)
    assert Lsn(5).checked_sub(6) is None
    assert Lsn(5).saturating_sub(6) == Lsn(0)
    with pytest.raises(InvalidInput, match="underflow"):
        Lsn(5) - 6


@given(st.integers(min_value=0, max_value=LSN_MAX), st.integers(min_value=0, max_value=LSN_MAX))
def test_lsn_checked_sub_matches_int(a: int, b: int) -> None:
    result = Lsn(a).checked_sub(b)
    assert result == (a - b if a >= b else None)


# -- ids ---------------------------------------------------------------------


@given(HEX32, HEX32)
def test_ttid_round_trip(tenant: str, timeline: str) -> None:
    ttid = TenantTimelineId(tenant, timeline)
    assert is_hex_id(tenant) and is_hex_id(timeline)
    assert str(ttid) == f"{tenant}/{timeline}"
    assert TenantTimelineId.parse(str(ttid)) == ttid


@pytest.mark.parametrize(
    "text",
    [
        "../x",
        "../" + "a" * 32,
        "A" * 32 + "/" + "b" * 32,
        "a" * 32 + "/" + "B" * 32,
        "a" * 31 + "/" + "b" * 32,
        "a" * 32 + "/" + "b" * 33,
        "a" * 64,
        "a" * 32 + "/" + "b" * 32 + "/",
        "a" * 32 + "/" + "b" * 32 + "/" + "c" * 32,
        "/" + "a" * 32,
        "",
        " " + "a" * 32 + "/" + "b" * 32,
    ],
)
def test_ttid_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidInput):
        TenantTimelineId.parse(text)
    assert not is_hex_id(text)


# -- segment names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("segno", "seg_size", "name"),
    [
        (1, 16 * MiB, "000000010000000000000001"),
        (255, 16 * MiB, "0000000100000000000000FF"),
        (256, 16 * MiB, "000000010000000100000000"),
        (3, GiB, "000000010000000000000003"),
        (4, GiB, "000000010000000100000000"),
        (4096, MiB, "000000010000000100000000"),
        (4095, MiB, "000000010000000000000FFF"),
    ],
)
def test_xlog_file_name_matches_postgres(segno: int, seg_size: int, name: str) -> None:
    assert xlog_file_name(segno, seg_size) == name
    assert parse_xlog_file_name(name, seg_size) == (1, segno)


@pytest.mark.parametrize("seg_size", SEG_SIZES)
@given(data=st.data())
def test_xlog_file_name_round_trip(seg_size: int, data: st.DataObject) -> None:
    max_segno = segments_per_xlogid(seg_size) * 0x100000000 - 1
    segno = data.draw(st.integers(min_value=0, max_value=max_segno))
    name = xlog_file_name(segno, seg_size)
    assert len(name) == 24 and name.startswith("00000001")
    assert SEGMENT_NAME_RE.fullmatch(name)
    assert parse_xlog_file_name(name, seg_size) == (1, segno)


@pytest.mark.parametrize(
    "name",
    [
        "00000001000000000000001",  # 23 characters
        "0000000100000000000000010",  # 25 characters
        "00000001000000000000000a",  # lower case
        "000000000000000000000001",  # timeline 0
        "000000010000000000000100",  # segment 0x100 does not exist at 16 MiB
        "000000010000000000000001.partial",
        "../00000001000000000000001",
    ],
)
def test_parse_xlog_file_name_rejects(name: str) -> None:
    with pytest.raises(InvalidInput):
        parse_xlog_file_name(name, 16 * MiB)


@pytest.mark.parametrize("seg_size", SEG_SIZES)
def test_valid_seg_sizes(seg_size: int) -> None:
    assert validate_seg_size(seg_size) == seg_size


@pytest.mark.parametrize("seg_size", [0, MiB // 2, 2 * GiB, 3 * MiB, 16 * MiB + 1, True])
def test_invalid_seg_sizes(seg_size: int) -> None:
    with pytest.raises(InvalidInput, match="wal_seg_size"):
        validate_seg_size(seg_size)


# -- purity ------------------------------------------------------------------


def test_core_imports_no_io_libraries() -> None:
    code = (
        "import importlib, pkgutil, sys, tasks.core\n"
        "for m in pkgutil.iter_modules(tasks.core.__path__):\n"
        "    importlib.import_module('tasks.core.' + m.name)\n"
        "bad = {'celery', 'redis', 'boto3', 'botocore', 'kombu'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in bad)\n"
        "assert not loaded, loaded\n"
        "assert 'tasks.core.timeline_scan' in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
