"""The beat schedule, as data: one fan-out election task per tick.

One entry, not one per timeline: a single ``walbackup.elect_all`` task reads
the registered timelines from Redis and elects them in pipelined batches.
"""

from __future__ import annotations

from typing import Any

from tasks.names import ELECT_ALL, SHARED_QUEUE


def build_schedule(election_interval_s: float) -> dict[str, dict[str, Any]]:
    return {
        "walbackup-elect-all": {
            "task": ELECT_ALL,
            "schedule": election_interval_s,
            # A tick nobody ran in time is stale: drop it rather than pile up.
            "options": {"queue": SHARED_QUEUE, "expires": max(2 * election_interval_s, 1.0)},
        }
    }
