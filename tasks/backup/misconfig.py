"""A timeline this node cannot back up by its setup, not by a fault: said loudly.

- Segment files of another valid size than ``WALBACKUP_WAL_SEG_SIZE``: a
  setting to fix; until then this node backs up none of them.
- Segment files of a later PostgreSQL timeline: the server was promoted, and
  walbackup archives PostgreSQL timeline 1 only (``PG_TLI``; SPEC §1, as
  Neon's safekeepers, whose computes never promote), so what the server
  writes since is not backed up.
- A timeline directory the node cannot read (its mode or owner, a corrupt
  state file, a disk error): its WORKDIR scan leaves it out
  (``WorkdirScanner.failures``, which logs the ERROR), so the node is no
  longer its peer and the other nodes' copies are backed up.

Either must not look like a healthy, idle timeline: an ERROR in the log and
the timeline's ``last_error``, again every 30 s (another node's commit clears
it); ``ClusterGauges`` counts the later timeline's files as unarchived WAL,
so the unarchived-WAL alert fires too.
"""

from __future__ import annotations

import logging

from tasks.core.segments import PG_TLI
from tasks.logutil import Throttle
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState

log = logging.getLogger("walbackup.node")


class SetupErrors:
    def __init__(self, node_id: int, state: RedisState) -> None:
        self.node_id = node_id
        self.state = state
        self._throttle = Throttle(30.0)

    def check(self, st: TimelineState) -> None:
        message = setup_problem(self.node_id, st)
        if message is None or not self._throttle.allow(str(st.ttid)):
            return
        log.error("Timeline %s: %s", st.ttid, message)
        self.state.record_error(str(st.ttid), message)

    def left_out(self, ttid: str, problem: str) -> None:
        """The WORKDIR scan left ``ttid`` out for ``problem`` (logged there)."""
        if self._throttle.allow(("left out", ttid)):
            self.state.record_error(ttid, left_out_problem(self.node_id, problem))


def left_out_problem(node_id: int, problem: str) -> str:
    return (
        f"node {node_id}: left out of its WORKDIR scan, so it backs up none of this "
        f"timeline and is not its peer: {problem}"
    )


def setup_problem(node_id: int, st: TimelineState) -> str | None:
    """What is wrong with the timeline's setup on this node, if anything."""
    if st.foreign_seg_size is not None:
        return (
            f"node {node_id}: the segment files of this timeline are {st.foreign_seg_size} "
            f"bytes but WALBACKUP_WAL_SEG_SIZE is {st.wal_seg_size}: set it to the server's "
            "wal_segment_size; until then this node backs up none of them"
        )
    if st.foreign_tli is not None:
        return (
            f"node {node_id}: this timeline's directory holds WAL of PostgreSQL timeline "
            f"{st.foreign_tli}: its server was promoted, and walbackup archives PostgreSQL "
            f"timeline {PG_TLI} only, so the WAL written since the promotion is NOT backed up; "
            f"a restore from this archive ends where timeline {PG_TLI} ends (walbackup fetch "
            f"refuses timeline {st.foreign_tli}'s segments: recovery_target_timeline = "
            f"'{PG_TLI}' restores up to there)"
        )
    return None
