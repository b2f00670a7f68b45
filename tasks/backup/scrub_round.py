"""Beat's scrub tick: tell each offloader which of its timelines to scrub, one message per node."""

from __future__ import annotations

from collections.abc import Callable

from tasks.state.beats import chunks
from tasks.state.keys import SCRUB_LOCK_KEY
from tasks.state.redis import RedisState

SendScrub = Callable[[int, list[str]], None]
"""Send ``scrub_timelines(ttids)`` to a node's queue."""


def scrub_round(
    state: RedisState, send: SendScrub, interval_s: float, batch_size: int = 1000
) -> int:
    """Ask every registered timeline's offloader to scrub it (timelines with
    no offloader or no backup_lsn yet are skipped); how many were asked for.
    At most one round per ``interval_s``: a backlog of beat's ticks (they do
    not expire, ``beat.schedule``) sends no more than one."""
    if not state.take_round_lock(max(100, int(interval_s * 900)), SCRUB_LOCK_KEY):
        return 0
    by_node: dict[int, list[str]] = {}
    total = state.registered_count()
    for start in range(0, total, batch_size):
        batch = state.registered(start, start + batch_size - 1)
        for ttid, facts in zip(batch, state.cluster_facts(batch), strict=True):
            if facts.backup_lsn is not None and facts.offloader is not None:
                by_node.setdefault(facts.offloader, []).append(ttid)
    for node_id, ttids in sorted(by_node.items()):
        for part in chunks(ttids, batch_size):
            send(node_id, list(part))
    return sum(len(t) for t in by_node.values())
