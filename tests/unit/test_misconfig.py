"""tasks.backup.misconfig: what a node says of a timeline it cannot back up
by its setup (a wrong segment size; a promoted server's later timeline)."""

from __future__ import annotations

import secrets
from pathlib import Path

from tasks.backup.misconfig import setup_problem
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.state.timeline_state import TimelineState

SEG = 1 << 20


def _state(foreign_seg_size: int | None = None, foreign_tli: int | None = None) -> TimelineState:
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    return TimelineState(
        ttid, Path("/nonexistent"), SEG, Lsn(SEG), Lsn(4 * SEG), Lsn(SEG), None, (),
        foreign_seg_size=foreign_seg_size, foreign_tli=foreign_tli,
    )  # fmt: skip


def test_each_setup_problem_says_what_is_not_backed_up_and_what_to_do() -> None:
    assert setup_problem(1, _state()) is None
    size = setup_problem(2, _state(foreign_seg_size=16 * SEG))
    assert size is not None and "node 2" in size and "16777216 bytes" in size
    assert "WALBACKUP_WAL_SEG_SIZE" in size
    promoted = setup_problem(3, _state(foreign_tli=2))
    assert promoted is not None and "PostgreSQL timeline 2" in promoted
    assert "NOT backed up" in promoted and "recovery_target_timeline = '1'" in promoted
