"""Who uploads a timeline: the reference's ``determine_offloader`` as a pure function.

Normally one node offloads; S3 has no compare-and-swap, so for a short while
two may PUT the same files, which is harmless (same bytes, conditional write).
Changing the offloader often would be wasteful and electing a badly lagging
node undesirable, so the choice is deterministic among caught-up candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.core.lsn import Lsn


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What a node last said about one timeline."""

    node_id: int
    commit_lsn: Lsn
    local_start_lsn: Lsn
    backup_lsn: Lsn
    ts: float  # unix time of the last heartbeat (as read: tasks.state.beats.ElectionFeed.beaten)
    damaged_lsn: Lsn | None = None
    """Start of the lowest segment at or above backup_lsn whose local copy is
    damaged (wrong size, unreadable, or outvoted by the other nodes' copies)."""


@dataclass(frozen=True, slots=True)
class Election:
    offloader: int | None
    reason: str


def heard_lately(last_heartbeat: float | None, now: float, heartbeat_timeout_s: float) -> bool:
    """A node is alive while its last heartbeat (cluster clock; ``None``:
    never heard) is younger than the timeout (SPEC §4). One from further in
    the future than that is stale too: written before Redis's clock was
    stepped back (an NTP step, a failover to a replica behind), it would keep
    a dead node alive for as long as the step."""
    if last_heartbeat is None:
        return False
    return -heartbeat_timeout_s < now - last_heartbeat < heartbeat_timeout_s


def is_alive(peer: PeerInfo, now: float, heartbeat_timeout_s: float) -> bool:
    """A peer is alive while its last heartbeat for the timeline is young."""
    return heard_lately(peer.ts, now, heartbeat_timeout_s)


def determine_offloader(
    alive: Iterable[PeerInfo],
    backup_lsn: Lsn,
    timeline_int: int,
    max_offloader_lag_bytes: int,
) -> Election:
    # A peer that no longer holds WAL at backup_lsn cannot fill the gap.
    capable = [p for p in alive if p.local_start_lsn <= backup_lsn]
    if not capable:
        return Election(None, "no connected peers to elect from")
    # Not in the reference: a peer holding a damaged copy of a segment still
    # to upload steps aside while another peer's copies are all good (SPEC §4
    # "Agreement"); with damage everywhere the reference's rule applies.
    healthy = [p for p in capable if p.damaged_lsn is None]
    skipped = ""
    if healthy and len(healthy) < len(capable):
        skipped = ", skipping damaged " + ", ".join(
            f"({p.node_id}, damaged at {p.damaged_lsn})"
            for p in sorted(capable, key=lambda p: p.node_id)
            if p.damaged_lsn is not None
        )
        capable = healthy
    max_commit = max(p.commit_lsn for p in capable)
    threshold = max_commit.saturating_sub(max_offloader_lag_bytes)
    caught_up = sorted((p for p in capable if p.commit_lsn >= threshold), key=lambda p: p.node_id)
    # Shift by timeline id to spread timelines over nodes.
    offloader = caught_up[timeline_int % len(caught_up)].node_id
    listed = ", ".join(
        f"({p.node_id}, {p.commit_lsn})" for p in sorted(capable, key=lambda p: p.node_id)
    )
    return Election(
        offloader,
        f"elected {offloader} among [{listed}] peers, with {len(caught_up)} of them being "
        f"caughtup{skipped}",
    )


def live_nodes(
    nodes: Mapping[int, Mapping[str, Any]], now: float, heartbeat_timeout_s: float
) -> frozenset[int]:
    """The nodes whose last heartbeat (the nodes hash's ``ts``) is recent."""
    return frozenset(
        n for n, entry in nodes.items() if heard_lately(entry.get("ts"), now, heartbeat_timeout_s)
    )


def reported_by(live: frozenset[int], peers: Iterable[int]) -> bool:
    """Whether every live node is among a timeline's (live) ``peers``."""
    return live <= set(peers)
