"""The local WAL removal horizon, in pure form: which complete segments a node may delete.

Neon's ``calc_horizon_lsn`` (safekeeper ``remove_wal.rs``) keeps WAL from
``min(backup_lsn, commit_lsn, flush_lsn)``: what is not yet offloaded, and
what the node needs to find its own position again. Here, with ``segno(x) =
x // seg_size``, the segments a node may delete are the complete ones below

    end = min(segno(base) - keep_segments, segno(commit_lsn) - 1), floored at 0
    base = min(cluster backup_lsn, the state file's backup_lsn,
               the scrubber's verified_lsn, commit_lsn)

- the cluster's backup_lsn, as this node learned it from Redis this round,
  and never more than what its state file recorded: every segment below it
  was uploaded and verified byte for byte before it was committed;
- and never more than the scrubber's ``verified_lsn``: a committed object can
  still be damaged or deleted in the archive before the scrubber's next pass,
  and then the nodes' copies are what heals it. So a node keeps every segment
  the scrubber has not yet found intact in the archive, and every one from
  its first open problem on (``verified_lsn`` stops there);
- either unknown (Redis lost its data and the archive was not listed yet, or
  no scrub pass since): nothing;
- the segment holding ``base`` is never deleted, so ``local_start_lsn <=
  backup_lsn`` holds and the node stays electable; nor the newest complete
  segment (``segno(commit_lsn) - 1``), even with ``keep_segments = 0``;
- a horizon recorded earlier (a batch cut short by a crash) is finished:
  it overrides ``keep_segments`` (raised since, perhaps), never the rules above.

The horizon is ``Lsn.from_segment(end)``. ``tasks.backup.removal`` records
it in the state file (never lowering the recorded value) before deleting.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.core.lsn import Lsn


def removal_horizon(
    *,
    seg_size: int,
    cluster_backup_lsn: Lsn | None,
    verified_lsn: Lsn | None,
    recorded_backup_lsn: Lsn,
    commit_lsn: Lsn | None,
    keep_segments: int,
    recorded_horizon_lsn: Lsn | None = None,
) -> Lsn | None:
    """The LSN (a segment boundary) below which complete segments may be
    deleted, or ``None`` when nothing may be (backup_lsn or verified_lsn
    unknown, no WAL)."""
    if keep_segments < 0:
        raise ValueError(f"keep_segments must be >= 0, got {keep_segments}")
    if cluster_backup_lsn is None or verified_lsn is None or commit_lsn is None:
        return None
    base = min(cluster_backup_lsn, recorded_backup_lsn, verified_lsn, commit_lsn)
    cap = min(base.segment_number(seg_size), commit_lsn.segment_number(seg_size) - 1)
    end = min(cap, base.segment_number(seg_size) - keep_segments)
    if recorded_horizon_lsn is not None:
        end = max(end, min(cap, recorded_horizon_lsn.segment_number(seg_size)))
    return Lsn.from_segment(max(0, end), 0, seg_size)


def segments_below(held: Iterable[int], horizon_lsn: Lsn, seg_size: int, limit: int) -> list[int]:
    """The lowest ``limit`` of the ``held`` segnos lying wholly below
    ``horizon_lsn``, ascending: deleted in this order, what remains of a run
    stays contiguous whenever the deleting stops."""
    end = horizon_lsn.segment_number(seg_size)
    return sorted(s for s in held if s < end)[: max(0, limit)]
