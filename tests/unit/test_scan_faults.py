"""A WORKDIR with a directory this node cannot read (the drill: mode 000 on
a node without ``CAP_DAC_OVERRIDE``): that timeline, or that tenant's
timelines, are left out of the scan with the reason, and every other
timeline carries on (SPEC §9: no process deaths).

Root reads any file whatever its mode, so each scan here runs in a child
process that has dropped the capabilities which let it (as
``tests/faults/test_local_damage.py`` runs its node).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name

SEG = 1 << 20
TENANT, OTHER_TENANT = "1" * 32, "2" * 32
A = TenantTimelineId(TENANT, "a" * 32)
B = TenantTimelineId(TENANT, "b" * 32)
C = TenantTimelineId(OTHER_TENANT, "c" * 32)

if os.geteuid() == 0:
    WITHOUT_DAC_BYPASS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        pytestmark = pytest.mark.skip(reason="needs setpriv (util-linux) to drop root's bypass")
else:
    WITHOUT_DAC_BYPASS = []  # file modes hold for this user already

WRITE = -1
"""In a step, instead of a mode: write a segment file at the path."""

_SCANS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from tasks.state.workdir import Workdir

    WRITE = -1

    workdir, watch, steps = Path(sys.argv[1]), sys.argv[2] == "1", json.loads(sys.argv[3])
    disk = Workdir(workdir, 1 << 20, watch=watch)
    passes = []
    for changes in steps:  # before each pass: (path, mode) to chmod, or a segment to write
        for path, mode in changes:
            if mode == WRITE:
                Path(path).write_bytes(bytes(1 << 20))
            else:
                os.chmod(path, mode)
        states = disk.scan()
        passes.append({
    "states": {str(t): str(s.commit_lsn) for t, s in states.items()},
            "failures": {str(t): why for t, why in disk.failures.items()},
            "tenant_failures": disk.tenant_failures,
            "watching": disk.watching,
        })
    print(json.dumps(passes))
""")


def scans(
    workdir: Path, steps: list[list[tuple[Path, int]]], *, watch: bool, log: list[str] | None = None
) -> Any:
    """One ``Workdir`` in a process that file modes hold for, and a pass after
    each step's changes: what each pass saw; ``log`` gets its log lines."""
    run = subprocess.run(
        [*WITHOUT_DAC_BYPASS, sys.executable, "-c", _SCANS, str(workdir), "1" if watch else "0",
         json.dumps([[(str(p), mode) for p, mode in step] for step in steps])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    if log is not None:
        log += run.stderr.splitlines()
    return json.loads(run.stdout)


def make(workdir: Path, ttid: TenantTimelineId, segments: int = 2) -> Path:
    path = workdir / ttid.tenant_id / ttid.timeline_id
    path.mkdir(parents=True)
    for segno in range(1, segments + 1):
        (path / xlog_file_name(segno, SEG)).write_bytes(b"\0" * SEG)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "wal"
    for ttid in (A, B, C):
        make(root, ttid)
    return root


@pytest.fixture(params=[True, False], ids=["inotify", "scanning"])
def watch(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_an_unreadable_timeline_directory_is_left_out_and_the_others_carry_on(
    workdir: Path, watch: bool
) -> None:
    a = workdir / A.tenant_id / A.timeline_id
    b3 = workdir / B.tenant_id / B.timeline_id / xlog_file_name(3, SEG)
    steps = [[], [(a, 0o000), (b3, WRITE)], [], [(a, 0o755)]]
    log: list[str] = []
    first, locked, still, again = scans(workdir, steps, watch=watch, log=log)
    assert set(first["states"]) == {str(A), str(B), str(C)}
    assert set(locked["states"]) == {str(B), str(C)}
    assert locked["states"][str(B)] == str(Lsn(4 * SEG))  # B goes on: its new segment 3
    why = locked["failures"][str(A)]
    assert why.startswith(f"cannot read {a}: Permission denied (EACCES")
    assert still["failures"] == locked["failures"] and set(still["states"]) == {str(B), str(C)}
    said = [line for line in log if str(A) in line]
    assert said == [f"Timeline {A}: left out of the scan: {why}"]  # once, not every pass
    assert set(again["states"]) == {str(A), str(B), str(C)} and again["failures"] == {}


def test_a_node_starts_with_an_unreadable_timeline_directory(workdir: Path, watch: bool) -> None:
    a = workdir / A.tenant_id / A.timeline_id
    a.chmod(0o000)
    b3 = workdir / B.tenant_id / B.timeline_id / xlog_file_name(3, SEG)
    first, grown, back = scans(workdir, [[], [(b3, WRITE)], [(a, 0o755)]], watch=watch)
    assert set(first["states"]) == {str(B), str(C)}
    assert "Permission denied (EACCES" in first["failures"][str(A)]
    # Its watch refused (EACCES), inotify goes on for every other directory
    # (it was given up for the whole node until a restart), and this one is
    # rescanned each pass.
    assert first["watching"] is grown["watching"] is back["watching"] is watch
    assert grown["states"][str(B)] == str(Lsn(4 * SEG))
    assert set(back["states"]) == {str(A), str(B), str(C)} and back["failures"] == {}


def test_an_unreadable_tenant_directory_leaves_out_its_timelines_only(
    workdir: Path, watch: bool
) -> None:
    tenant = workdir / TENANT
    first, locked, again = scans(workdir, [[], [(tenant, 0o000)], [(tenant, 0o755)]], watch=watch)
    assert set(first["states"]) == {str(A), str(B), str(C)}
    assert set(locked["states"]) == {str(C)}
    assert locked["tenant_failures"] == {
        TENANT: f"cannot read {tenant}: Permission denied (EACCES)"
    }
    # Each timeline it had is named, so that its last_error can tell.
    assert set(locked["failures"]) == {str(A), str(B)}
    assert "Permission denied (EACCES" in locked["failures"][str(A)]
    assert set(again["states"]) == {str(A), str(B), str(C)}
    assert again["failures"] == {} and again["tenant_failures"] == {}


def test_a_node_starts_with_an_unreadable_tenant_directory(workdir: Path, watch: bool) -> None:
    (workdir / TENANT).chmod(0o000)
    (first,) = scans(workdir, [[]], watch=watch)
    assert set(first["states"]) == {str(C)}
    assert set(first["tenant_failures"]) == {TENANT}


def test_an_unreadable_workdir_leaves_out_every_timeline_until_it_can_be_read(
    workdir: Path, watch: bool
) -> None:
    """A node whose WORKDIR itself could not be listed kept its last view of
    every timeline, frozen: it stayed their offloader and said nothing."""
    for path in sorted(workdir.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (1e9, 1e9))  # old: every listing is trusted, none rescanned for its age
    # A quiet pass first: the chmod is seen by its event (the WORKDIR's ATTRIB).
    steps = [[], [], [(workdir, 0o000)], [], [(workdir, 0o755)]]
    log: list[str] = []
    first, quiet, locked, still, again = scans(workdir, steps, watch=watch, log=log)
    assert set(first["states"]) == set(quiet["states"]) == {str(A), str(B), str(C)}
    assert locked["states"] == {}
    assert set(locked["failures"]) == {str(A), str(B), str(C)}
    assert "Permission denied (EACCES" in locked["failures"][str(A)]
    assert still["states"] == {} and still["failures"] == locked["failures"]
    said = [line for line in log if "cannot be listed" in line]
    assert len(said) == 1 and f"cannot read {workdir}: Permission denied (EACCES)" in said[0]
    assert set(again["states"]) == {str(A), str(B), str(C)} and again["failures"] == {}
    assert again["watching"] is watch
