"""The WAL header check before a complete segment is uploaded (SPEC §5).

A segment is uploaded only if its first page is the long page header
PostgreSQL writes for it (``tasks.core.walpage.check_long_header``: a known
magic, ``xlp_pageaddr`` the segment's start, ``xlp_seg_size`` the timeline's
``wal_seg_size``) carrying the timeline's system identifier: the first one
recorded in Redis (HSETNX), as pgBackRest's archive-header-check holds WAL to
its stanza's. The heartbeats copy that identifier into every node's state
file (``tasks.backup.heartbeats``), and give it back to a Redis that lost it;
once there, it is what this check compares with, without a round trip.

A copy that fails is marked damaged (``Copies.mark_damaged``): the node
reports it in its heartbeat and another node with a valid copy is elected.
``WALBACKUP_WAL_HEADER_CHECK=false`` turns all of this off for payloads that
are not PostgreSQL WAL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.backup.copies import Copies
from tasks.config import Settings
from tasks.core.lsn import Lsn
from tasks.core.walpage import LONG_HEADER_BYTES, LongHeader, check_long_header, parse_long_header
from tasks.errors import InvalidWalHeader, SegmentFileError
from tasks.metrics import INVALID_WAL_HEADERS
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState


class HeaderCheck:
    """Called from the upload threads; holds no state of its own."""

    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        copies: Copies,
        timeline: Callable[[str], TimelineState | None],
    ) -> None:
        assert settings.node_id is not None
        self.node_id = settings.node_id
        self.enabled = settings.wal_header_check
        self.state = state
        self.copies = copies
        self.timeline = timeline

    def check(
        self, ttid: str, segno: int, seg_size: int, path: Path, name: str
    ) -> LongHeader | None:
        """The long header of our copy of ``segno`` at ``path``. With the check
        on, a header that is not valid for it raises ``InvalidWalHeader``
        (after marking the copy damaged); off, the header is returned if it
        parses, else ``None``. A file that cannot be read raises
        ``SegmentFileError``."""
        try:
            with open(path, "rb") as f:
                first_page = f.read(LONG_HEADER_BYTES)
        except OSError as exc:
            raise SegmentFileError(
                f"segment file {path}: cannot read its first page: {exc.strerror or exc}"
            ) from exc
        start = Lsn.from_segment(segno, 0, seg_size)
        if not self.enabled:
            return parse_long_header(first_page, start, seg_size)
        try:
            header = check_long_header(first_page, start, seg_size, None)
            st = self.timeline(ttid)
            system_id = st.system_id if st is not None else None
            if system_id is None:  # not yet copied from Redis into our state file
                system_id = self.state.record_system_id(ttid, header.sysid)
            return check_long_header(first_page, start, seg_size, system_id)
        except InvalidWalHeader as exc:
            INVALID_WAL_HEADERS.inc()
            reason = f"invalid WAL page header: {exc}"
            self.copies.mark_damaged(ttid, segno, path, reason)
            raise InvalidWalHeader(
                f"{name} on node {self.node_id} ({path}): {reason}; not uploaded"
            ) from exc
