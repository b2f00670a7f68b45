"""Is this node's storage the cluster's archive? The decision, in pure form.

Every node builds its storage from its own settings. One node given another
endpoint (or bucket, or prefix) that answers would upload, verify, commit and
scrub against it as if it were the archive, in silence, while the other nodes
remove the WAL it "archived". So the archive carries an id: a marker object
at the storage's root, the same id in Redis, and every node compares the two
before it uses its storage (``tasks.archive.identity``):

- both, equal: this node's storage is the archive;
- both, different: it is another archive (or Redis is another cluster's);
- the marker only (Redis lost its data): Redis takes the marker's id;
- neither (a new cluster, or an archive from before the id): a new id;
- Redis's id only: the marker is missing from this node's storage. If
  another node found it in its own storage lately, this node's storage is
  not theirs; if none did (a bucket emptied or recreated: every node finds
  it missing), the marker is written again with Redis's id.
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


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    problem: str | None = None


def decide(cluster_id: str | None, marker_id: str | None, seen_by: list[int]) -> Decision:
    """``cluster_id``: Redis's; ``marker_id``: the marker in this node's
    storage; ``seen_by``: the other nodes that found the cluster's id in
    their storage lately."""
    if marker_id is not None and cluster_id is not None:
        if marker_id == cluster_id:
            return Decision(Action.OURS)
        return Decision(
            Action.FOREIGN,
            f"this node's storage holds archive {marker_id}, but the cluster's archive is "
            f"{cluster_id}: its endpoint, bucket or prefix is not the other nodes'",
        )
    if marker_id is not None:
        return Decision(Action.ADOPT)
    if cluster_id is None:
        return Decision(Action.CREATE)
    if seen_by:
        nodes = ", ".join(str(n) for n in sorted(seen_by))
        return Decision(
            Action.FOREIGN,
            f"the cluster's archive {cluster_id} is not in this node's storage, where "
            f"node(s) {nodes} find it: its endpoint, bucket or prefix is not theirs (or "
            "the bucket was emptied or recreated: then every node finds it missing, and "
            "it is written again once no node has found it for a few minutes)",
        )
    return Decision(Action.RESTORE)
