"""Is this node's storage the cluster's archive? The decision, in pure form.

Every node builds its storage from its own settings. One node given another
endpoint (or bucket, or prefix) that answers would upload, verify, commit and
scrub against it as if it were the archive, in silence, while the other nodes
remove the WAL it "archived". So the archive carries an id: a marker object
at the storage's root, the same id in Redis, and every node compares the two
before it uses its storage (``tasks.archive.identity``):

- both, equal: this node's storage is the archive;
- both, different: it is another archive (or Redis is another cluster's);
- the marker only (Redis lost its data, and this node never knew an id):
  Redis takes the marker's id, from a node with most nodes' settings;
- Redis's id only: the marker is missing from this node's storage. If
  another node found it in its own storage lately, this node's storage is
  not theirs. If none did (a bucket emptied or recreated: every node finds it
  missing), the marker is written again with the id;
- neither: a new cluster; a new id.

Writing a marker (a new id, or the id again) is the one step that could make
a wrong storage the archive, so only a node whose storage settings most of
the nodes share takes it (``majority``): a lone misconfigured node waits.
A node remembers the id it last knew (its WORKDIR), so Redis losing its data
never lets a new id replace the cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    OURS = "ours"
    ADOPT = "adopt"  # Redis takes the marker's id
    CREATE = "create"  # a new id, in the marker and then in Redis
    RESTORE = "restore"  # the marker is written again with Redis's id
    FOREIGN = "foreign"
    WAIT = "wait"  # the marker should be written, but not by this node


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    problem: str | None = None


def decide(
    cluster_id: str | None,
    marker_id: str | None,
    seen_by: list[int],
    *,
    majority: bool,
    seen_lately: bool = False,
) -> Decision:
    """``cluster_id``: Redis's (or the one this node remembers); ``marker_id``:
    the marker in this node's storage; ``seen_by``: the other nodes that found
    the cluster's id in their storage lately (``seen_lately``: some did, as
    this node remembers, though Redis lost who); ``majority``: most nodes that
    checked lately have this node's storage settings."""
    if marker_id is not None and cluster_id is not None:
        if marker_id == cluster_id:
            return Decision(Action.OURS)
        return Decision(
            Action.FOREIGN,
            f"this node's storage holds archive {marker_id}, but the cluster's archive is "
            f"{cluster_id}: its endpoint, bucket or prefix is not the other nodes'",
        )
    if marker_id is not None:
        if majority:
            return Decision(Action.ADOPT)
        return Decision(
            Action.WAIT,
            f"this node's storage holds archive {marker_id} and Redis none, but most nodes "
            "have other storage settings: it does not name the cluster's archive",
        )
    if seen_by or seen_lately:
        nodes = f"node(s) {', '.join(str(n) for n in sorted(seen_by))}" if seen_by else "nodes"
        return Decision(
            Action.FOREIGN,
            f"the cluster's archive {cluster_id} is not in this node's storage, where "
            f"other {nodes} find it: its endpoint, bucket or prefix is not theirs (or "
            "the bucket was emptied or recreated: then every node finds it missing, and "
            "it is written again once no node has found it for a few minutes)",
        )
    if not majority:
        return Decision(
            Action.WAIT,
            "no archive marker in this node's storage, and most nodes have other storage "
            "settings: it writes none (its endpoint, bucket or prefix is not theirs?)",
        )
    return Decision(Action.CREATE if cluster_id is None else Action.RESTORE)


def has_majority(mine: str, others: list[str]) -> bool:
    """Whether storage settings fingerprint ``mine`` is shared by more than
    half of the nodes: this one and ``others`` (the others' fingerprints)."""
    same = 1 + sum(1 for fp in others if fp == mine)
    return 2 * same > 1 + len(others)
