"""tasks.dev.simulate: the deterministic WAL writer."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.core.walpage import check_long_header
from tasks.dev.simulate import (
    BLOCK_SIZE,
    SegmentWritten,
    expected_segment_bytes,
    iter_segment_blocks,
    segment_matches,
    simulate,
    simulated_header,
    simulated_system_id,
)
from tasks.errors import InvalidInput
from tasks.state.workdir import Workdir

SEG = 1 << 20
T1 = TenantTimelineId("0123456789abcdef0123456789abcdef", "00000000000000000000000000000001")
T2 = TenantTimelineId("0123456789abcdef0123456789abcdef", "00000000000000000000000000000002")


def tl_dir(workdir: Path, ttid: TenantTimelineId) -> Path:
    return workdir / ttid.tenant_id / ttid.timeline_id


def test_content_is_deterministic_and_distinct() -> None:
    a = expected_segment_bytes(T1, 1, 4 * SEG)
    assert len(a) == 4 * SEG
    assert a == expected_segment_bytes(T1, 1, 4 * SEG)
    assert a != expected_segment_bytes(T1, 2, 4 * SEG)
    assert a != expected_segment_bytes(T2, 1, 4 * SEG)
    blocks = list(iter_segment_blocks(T1, 1, 4 * SEG))
    assert len({*blocks}) == 4 and all(len(b) == BLOCK_SIZE for b in blocks)


@pytest.mark.parametrize("seg_size", [SEG, 16 * SEG])
def test_segments_start_with_a_valid_postgresql_15_header(seg_size: int) -> None:
    for ttid, segno in ((T1, 1), (T1, 300), (T2, 1)):
        first = next(iter_segment_blocks(ttid, segno, seg_size))
        start = Lsn.from_segment(segno, 0, seg_size)
        header = check_long_header(first, start, seg_size, simulated_system_id(ttid))
        assert header == simulated_header(ttid, segno, seg_size)
        assert (header.pg_version, header.tli, header.block_size) == (15, 1, 8192)
    assert simulated_system_id(T1) != simulated_system_id(T2)


def test_files_identical_across_workdirs(tmp_path: Path) -> None:
    workdirs = [tmp_path / f"node{i}" for i in range(3)]
    assert simulate(workdirs, [T1, T2], segments=3, seg_size=2 * SEG) == 3 * 2 * 3
    for ttid in (T1, T2):
        for segno in (1, 2, 3):
            name = xlog_file_name(segno, 2 * SEG)
            copies = [(tl_dir(wd, ttid) / name).read_bytes() for wd in workdirs]
            assert copies[0] == copies[1] == copies[2]
            assert copies[0] == expected_segment_bytes(ttid, segno, 2 * SEG)
            assert segment_matches(tl_dir(workdirs[0], ttid) / name, ttid, segno, 2 * SEG)
        assert not list(tl_dir(workdirs[0], ttid).glob("*.partial"))


def test_segment_matches_detects_damage(tmp_path: Path) -> None:
    simulate([tmp_path], [T1], segments=1, seg_size=2 * SEG)
    path = tl_dir(tmp_path, T1) / xlog_file_name(1, 2 * SEG)
    assert segment_matches(path, T1, 1, 2 * SEG)
    assert not segment_matches(path, T1, 2, 2 * SEG)
    data = bytearray(path.read_bytes())
    data[SEG + 7] ^= 1
    path.write_bytes(bytes(data))
    assert not segment_matches(path, T1, 1, 2 * SEG)
    path.write_bytes(bytes(data[:SEG]))
    assert not segment_matches(path, T1, 1, 2 * SEG)


def test_start_segno_and_node_state_agree(tmp_path: Path) -> None:
    seen: list[SegmentWritten] = []
    simulate([tmp_path], [T1], segments=3, seg_size=SEG, start_segno=5, on_segment=seen.append)
    assert [(s.segno, s.path.name) for s in seen] == [
        (segno, xlog_file_name(segno, SEG)) for segno in (5, 6, 7)
    ]
    tli = Workdir(tmp_path, SEG).scan()[T1]
    assert (tli.local_start_lsn, tli.commit_lsn) == (Lsn(5 * SEG), Lsn(8 * SEG))


def test_partial_renamed_when_full(tmp_path: Path) -> None:
    # Watch the directory while a rate-limited writer works: a .partial grows
    # chunk by chunk, and a final name only ever appears with the full size.
    seg_size = 4 * SEG
    directory = tl_dir(tmp_path, T1)
    seen: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for path in list(directory.glob("*")) if directory.exists() else []:
                with contextlib.suppress(FileNotFoundError):
                    seen.add((path.name, path.stat().st_size))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        simulate([tmp_path], [T1], segments=2, seg_size=seg_size, rate=10.0)
    finally:
        done.set()
        watcher.join()

    finals = {(n, s) for n, s in seen if not n.endswith(".partial")}
    partial_sizes = {s for n, s in seen if n.endswith(".partial")}
    assert finals <= {(xlog_file_name(k, seg_size), seg_size) for k in (1, 2)}
    assert any(0 < size < seg_size for size in partial_sizes)
    assert sorted(p.name for p in directory.iterdir()) == [
        xlog_file_name(1, seg_size),
        xlog_file_name(2, seg_size),
    ]


def test_stop_leaves_partial(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[SegmentWritten] = []

    def on_segment(written: SegmentWritten) -> None:
        seen.append(written)
        stop.set()

    # rate makes the writer check the event between chunks of the 2nd segment
    done = simulate(
        [tmp_path], [T1], segments=5, seg_size=4 * SEG, rate=50.0,
        stop_event=stop, on_segment=on_segment,
    )  # fmt: skip
    assert done == 1 and len(seen) == 1
    names = sorted(p.name for p in tl_dir(tmp_path, T1).iterdir())
    partial = xlog_file_name(2, 4 * SEG) + ".partial"
    assert names == [xlog_file_name(1, 4 * SEG), partial]
    assert (tl_dir(tmp_path, T1) / partial).stat().st_size < 4 * SEG
    assert Workdir(tmp_path, 4 * SEG).scan()[T1].commit_lsn == Lsn(2 * 4 * SEG)


def test_lag(tmp_path: Path) -> None:
    workdirs = [tmp_path / "a", tmp_path / "b"]
    simulate(workdirs, [T1], segments=5, seg_size=SEG, lag={1: 2})
    lead = Workdir(workdirs[0], SEG).scan()[T1]
    behind = Workdir(workdirs[1], SEG).scan()[T1]
    assert lead.commit_lsn == Lsn(6 * SEG)
    assert behind.commit_lsn == Lsn(4 * SEG)
    name = xlog_file_name(3, SEG)
    assert (tl_dir(workdirs[0], T1) / name).read_bytes() == (
        tl_dir(workdirs[1], T1) / name
    ).read_bytes()


def test_rate_is_roughly_respected(tmp_path: Path) -> None:
    started = time.monotonic()
    simulate([tmp_path], [T1, T2], segments=4, seg_size=SEG, rate=20.0, fsync=True)
    elapsed = time.monotonic() - started
    # 4 steps at 20 segments/s per timeline: the last chunk is due at ~0.19 s
    assert elapsed >= 0.15
    assert elapsed < 5.0


def test_unlimited_rate_is_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    simulate([tmp_path], [T1], segments=8, seg_size=SEG)
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segments": -1},
        {"rate": 0.0},
        {"rate": -3.0},
        {"lag": {5: 1}},
        {"lag": {0: -1}},
        {"seg_size": 3 * SEG},
        {"start_segno": -1},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "workdirs": [tmp_path],
        "ttids": [T1],
        "segments": 1,
        "seg_size": SEG,
    }
    args.update(kwargs)
    with pytest.raises(InvalidInput):
        simulate(**args)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())
