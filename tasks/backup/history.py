"""Timeline history files (``TLI.history``): archived once, by the offloader, never overwritten.

``pg_receivewal`` (and a promoted server) writes ``0000000N.history`` beside
the segments when the timeline changes; every recovery asks for them through
``restore_command``. The offloader's archive thread uploads each one it
finds with a conditional create: the same bytes already there are fine,
different bytes are an ERROR (and ``last_error``), never overwritten.
"""

from __future__ import annotations

import logging
import time

from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.storage.base import RemoteStorage, segment_key

log = logging.getLogger("walbackup.node")

MAX_HISTORY_BYTES = 1 << 20
"""A history file is a line per timeline switch; anything bigger is not one."""

RETRY_S = 10.0
"""A timeline's history file that failed to upload is tried again this much later."""


class HistoryFiles:
    """Used by the archive thread only."""

    def __init__(self, state: RedisState, storage: RemoteStorage) -> None:
        self.state = state
        self.storage = storage
        self._done: dict[str, set[str]] = {}
        self._failed: dict[str, float] = {}

    def archive(self, st: TimelineState) -> int:
        """Upload the history files of ``st`` not yet archived; how many were
        uploaded. The WORKDIR scan lists them (``TimelineState.history``):
        before, this thread listed every offloaded timeline's directory,
        thousands of segment names each, every 10 s."""
        ttid = str(st.ttid)
        done = self._done.setdefault(ttid, set())
        new = [name for name in st.history if name not in done]
        if not new or time.monotonic() - self._failed.get(ttid, -RETRY_S) < RETRY_S:
            return 0
        uploaded = 0
        for name in new:
            try:
                uploaded += self._archive(st, name)
            except Exception:
                self._failed[ttid] = time.monotonic()
                raise
            done.add(name)
        return uploaded

    def _archive(self, st: TimelineState, name: str) -> bool:
        path = st.path / name
        with path.open("rb") as f:
            data = f.read(MAX_HISTORY_BYTES + 1)
        if len(data) > MAX_HISTORY_BYTES:
            log.error("Timeline %s: %s is over %d bytes: not a history file; not archived",
                      st.ttid, path, MAX_HISTORY_BYTES)  # fmt: skip
            return False
        key = segment_key(st.ttid, name)
        if self.storage.create_bytes(key, data):
            log.info("Timeline %s: archived history file %s", st.ttid, name)
            return True
        if self.storage.read_bytes(key) != data:
            message = (
                f"history file {name} is archived with other bytes than {path}: not "
                "overwritten (two servers disagree about the timeline's history)"
            )
            log.error("Timeline %s: %s", st.ttid, message)
            self.state.record_error(str(st.ttid), message)
        return False

    def forget(self, keep: set[str]) -> None:
        for ttid in [t for t in self._done if t not in keep]:
            self._done.pop(ttid, None)
            self._failed.pop(ttid, None)
