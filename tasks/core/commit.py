"""The ordered-commit and claim rules, in pure form: the model of ``state/lua/_window.lua``.

Uploads finish in any order; ``backup_lsn`` may only move to the end of the
longest contiguous run of finished segments starting at ``segno(backup_lsn)``,
and never backwards. ``window_commit`` in ``state/lua/_window.lua`` (run by
``commit_segment.lua`` and ``commit_and_claim.lua``) applies the same rule
atomically in Redis; ``test_commit_matches_python_advance_in_any_order`` in
``tests/integration/test_redis_state.py`` checks that both agree, and
``tests/unit/test_commit.py`` tests ``advance`` itself.

``claim`` models ``window_claim``: which segments an upload window hands out
next. Unlike the reference's FuturesOrdered window, a finished segment above
a slow one does not keep its slot: up to ``parallel_jobs`` uploads stay in
flight anywhere in the reorder horizon ``[segno(backup_lsn), + horizon)``,
which bounds the finished-but-uncommitted segments (the done ZSET) instead.

Also here: ``backoff_ms``, the delay between a failed upload's attempts.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from tasks.core.lsn import Lsn


@dataclass(frozen=True, slots=True)
class WindowSize:
    """A timeline's upload window: ``parallel_jobs`` claims in flight at most,
    none ``horizon`` segments or more past ``segno(backup_lsn)``
    (``horizon >= parallel_jobs``; equal is the reference's FuturesOrdered)."""

    parallel_jobs: int
    horizon: int


def advance(backup_lsn: Lsn, finished: Set[int], seg_size: int) -> tuple[Lsn, set[int]]:
    """Return the new ``backup_lsn`` and the finished segnos still waiting for
    an earlier segment. Segnos below ``segno(backup_lsn)`` are dropped."""
    segno = backup_lsn.segment_number(seg_size)
    while segno in finished:
        segno += 1
    if segno == backup_lsn.segment_number(seg_size):
        new_lsn = backup_lsn
    else:
        new_lsn = max(backup_lsn, Lsn.from_segment(segno, 0, seg_size))
    return new_lsn, {s for s in finished if s > segno}


def claim(
    backup_lsn: Lsn,
    inflight: Mapping[int, int],
    done: Set[int],
    *,
    window: WindowSize,
    end_segno: int,
    seg_size: int,
    now_ms: int,
) -> list[int]:
    """The segnos to claim, lowest first: neither finished (``done``) nor in
    flight (``inflight``: segno -> deadline ms; a passed deadline is a lost
    claim, handed out again), inside ``[segno(backup_lsn), + horizon)`` and
    below ``end_segno``, until ``window.parallel_jobs`` claims are in flight."""
    start = backup_lsn.segment_number(seg_size)
    live = sum(1 for s, deadline in inflight.items() if s >= start and deadline > now_ms)
    out: list[int] = []
    for segno in range(start, min(end_segno, start + window.horizon)):
        if live >= window.parallel_jobs:
            break
        if segno not in done and inflight.get(segno, now_ms) <= now_ms:
            out.append(segno)
            live += 1
    return out


def backoff_ms(attempt: int, min_ms: int = 10, max_ms: int = 5000) -> int:
    """Delay before retry ``attempt`` (0-based count of failures so far)."""
    if attempt >= 32:
        return max_ms
    return min(max_ms, min_ms << attempt)
