"""The ordered-commit rule, in pure form: the model of ``state/lua/_window.lua``.

Uploads finish in any order; ``backup_lsn`` may only move to the end of the
longest contiguous run of finished segments starting at ``segno(backup_lsn)``,
and never backwards. ``window_commit`` in ``state/lua/_window.lua`` (run by
``commit_segment.lua`` and ``commit_and_claim.lua``) applies the same rule
atomically in Redis; ``test_commit_matches_python_advance_in_any_order`` in
``tests/integration/test_redis_state.py`` checks that both agree, and
``tests/unit/test_commit.py`` tests ``advance`` itself.

Also here: ``backoff_ms``, the delay between a failed upload's attempts.
"""

from __future__ import annotations

from collections.abc import Set

from tasks.core.lsn import Lsn


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


def backoff_ms(attempt: int, min_ms: int = 10, max_ms: int = 5000) -> int:
    """Delay before retry ``attempt`` (0-based count of failures so far)."""
    if attempt >= 32:
        return max_ms
    return min(max_ms, min_ms << attempt)
