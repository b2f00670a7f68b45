"""The beat schedule, as data: one fan-out task per tick for elections, one for scrubbing.

Not one entry per timeline: ``walbackup.elect_all`` reads the registered
timelines from Redis and elects them in pipelined batches;
``walbackup.scrub_all`` sends each offloader one message naming its
timelines to scrub.
"""

from __future__ import annotations

from typing import Any

from tasks.names import ELECT_ALL, SCRUB_ALL, SHARED_QUEUE


def build_schedule(
    election_interval_s: float, scrub_interval_s: float
) -> dict[str, dict[str, Any]]:
    return {
        "walbackup-scrub-all": {
            "task": SCRUB_ALL,
            "schedule": scrub_interval_s,
            "options": {"queue": SHARED_QUEUE},
        },
        "walbackup-elect-all": {
            "task": ELECT_ALL,
            "schedule": election_interval_s,
            # No ``expires``: a worker judges it by its own clock, and one
            # whose clock was a second ahead of beat's dropped every tick (a
            # broken NTP). A backlog of ticks finds the round lock taken.
            "options": {"queue": SHARED_QUEUE},
        },
    }
