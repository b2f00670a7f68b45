"""What a node does when its WORKDIR shows newly completed segments (SPEC §4, trigger).

Every node holding a timeline sees its segments complete, nearly at once.
Had each of them elected the timeline and kicked its offloader, a cluster of
three would run three elections and send three ``backup_timeline`` messages
per segment: at a thousand busy timelines that coordination, not the
uploads, filled the nodes' CPU (bench/README.md, fleet). So each node acts
on what its last heartbeat round learnt of the timeline:

- it holds the lease: it claims the new segments itself (``Leases.refill``,
  one fenced Lua call), no election, no message;
- it is the offloader of record: it takes the lease and fills the window
  (``Leases.backup_many``), no message (if an election moved the timeline
  meanwhile, it hands the lease over: ``Leases.hand_over``);
- no offloader is recorded (a new timeline, or Redis lost its data), or the
  offloader's node stopped heartbeating: it elects now; elected, it takes the
  lease itself; else it kicks the elected node, unless that node was elected
  before and kicked lately (it sees the same WAL, and acts on it itself);
- another, live node offloads it: nothing more. The heartbeat just
  published marks the timeline for beat's next round (``election_interval``),
  which moves it if that node can no longer offload it (a damaged copy, a lag)
  and kicks it when it has work and no upload in flight.

The election is the same everywhere; this only decides who asks for it now.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from tasks.backup.elector import NOT_RECOVERED, NOT_REPORTED, Elector
from tasks.backup.heartbeats import Heartbeats
from tasks.backup.leases import Leases
from tasks.core.election import heard_lately
from tasks.state.redis import RedisState

UNDECIDED = (NOT_RECOVERED, NOT_REPORTED)


class NewWal:
    """Runs in the node's watcher thread only. Timelines are taken ``BATCH`` at a time,
    each batch in a few pipelined round trips; the rest wait for the next
    pass of the watcher, so that a mass of new WAL never holds back its
    heartbeats (at 10,000 timelines, one pass over all of them took longer
    than ``heartbeat_timeout``, and the node lost every election)."""

    BATCH = 500

    def __init__(
        self,
        node_id: int,
        state: RedisState,
        elector: Elector,
        leases: Leases,
        heartbeats: Heartbeats,
        heartbeat_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self.state = state
        self.elector = elector
        self.leases = leases
        self.heartbeats = heartbeats
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._waiting: dict[str, None] = {}  # ordered set: first come, first started

    def completed(self, ttids: Sequence[str]) -> None:
        """``ttids`` have new complete segments on this node (their heartbeats
        are published already); called on every pass of the watcher."""
        if ttids:
            self.state.register(ttids)
            self._waiting.update(dict.fromkeys(ttids))
        if not self._waiting:
            return
        batch = list(itertools.islice(self._waiting, self.BATCH))
        for ttid in batch:
            del self._waiting[ttid]
        offloaders = self.heartbeats.offloaders
        # A lease of a timeline since given to another node is released by
        # the next heartbeat round; it claims nothing more meanwhile.
        candidates = [t for t in batch if offloaders.get(t) in (self.node_id, None)]
        done = set(candidates) - set(self.leases.refill(candidates))
        mine = [t for t in batch if t not in done and offloaders.get(t) == self.node_id]
        self.leases.backup_many(mine)
        now = self.state.clock.now()
        elect = [
            t for t in batch if t not in done and not self._heard_lately(offloaders.get(t), now)
        ]
        if elect:
            self.elect_now(elect)

    def forget(self, ttid: str) -> None:
        """The timeline's directory is gone from this node."""
        self._waiting.pop(ttid, None)

    def _heard_lately(self, node_id: int | None, now: float) -> bool:
        """Whether ``node_id`` (the offloader of record) heartbeats: ``False``
        for none."""
        seen = self.heartbeats.node_seen.get(node_id) if node_id is not None else None
        return heard_lately(seen, now, self.heartbeat_timeout_s)

    def elect_now(self, ttids: Sequence[str]) -> None:
        """Elect ``ttids``: start our own uploads if we are elected, and kick
        another elected node if this election chose it, or its last kick is
        old (``Elector.elect``). Recovering a lost backup_lsn lists remote
        storage: never the watcher, whose new WAL must not wait on S3 (a
        task does it, ``Elector.recover_later``). An election that could not
        decide yet (backup_lsn not recovered, not every node told of the
        timeline) hands nothing over: a lease taken meanwhile stays."""
        ours: list[str] = []
        elsewhere: dict[str, int | None] = {}
        for outcome in self.elector.elect(
            ttids, recover=False, local=self.node_id, settle=math.inf
        ):
            offloader = outcome.election.offloader
            if outcome.election.reason in UNDECIDED:
                continue
            if offloader != self.node_id:
                elsewhere[outcome.ttid] = offloader
            elif outcome.kicked:
                ours.append(outcome.ttid)
        self.leases.backup_many(ours)
        # Step down now rather than at the next heartbeat round.
        self.leases.hand_over(elsewhere)
