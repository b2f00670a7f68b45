"""What the demo tells its user: how to point the CLI at its cluster, what outlives it."""

from __future__ import annotations

import os
import shlex

from tasks.config import ENV_PREFIX
from tasks.dev.demo.processes import Cluster


def cli_env(cluster: Cluster, seg_size: int, *, private_redis: bool) -> str:
    """The ``export`` line that points ``walbackup status``/``verify``/``fetch`` at
    the demo's cluster, as its workers are configured. An external Redis's URL
    is left out: it may hold a password, and the user's environment has it."""
    env: dict[str, str] = {}
    if private_redis:
        env["REDIS_URL"] = cluster.redis_url
        if f"{ENV_PREFIX}BROKER_URL" in os.environ:  # the workers get the demo's, not that one
            env["BROKER_URL"] = cluster.redis_url
    env["REMOTE_STORAGE"] = cluster.remote_url
    env["DATA_DIR"] = str(cluster.root)
    env["WAL_SEG_SIZE"] = str(seg_size)
    return "export " + " ".join(f"{ENV_PREFIX}{k}={shlex.quote(v)}" for k, v in env.items())


def usage_lines(cluster: Cluster, seg_size: int, *, private_redis: bool) -> list[str]:
    """Printed at the start: how to look at the running cluster from another shell."""
    redis_note = "" if private_redis else f"  (and your {ENV_PREFIX}REDIS_URL)"
    return [
        "to use the CLI on this cluster, in another shell while the demo runs:",
        f"  {cli_env(cluster, seg_size, private_redis=private_redis)}{redis_note}",
        "  walbackup status; walbackup verify; walbackup fetch TTID SEGMENT DEST",
    ]


def afterwards_lines(cluster: Cluster, *, private_redis: bool) -> list[str]:
    """Printed at the end: what still works once the demo's children are stopped."""
    if private_redis:
        gone = (
            "its private Redis, nodes, beat and Flower are stopped, so `walbackup status` "
            "and `trigger` no longer reach them"
        )
        check = "checks it against its ledger"
    else:
        gone = "its nodes, beat and Flower are stopped; your Redis keeps the timelines' state"
        check = "checks it"
    return [
        f"the demo has ended: {gone}.",
        f"the archive stays in {cluster.root / 'remote'}: with the export line above, "
        f"`walbackup fetch TTID SEGMENT DEST` restores from it and `walbackup verify TTID` "
        f"{check}.",
    ]
