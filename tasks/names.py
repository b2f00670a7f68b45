"""Task and queue names: the contract between beat, the CLI, the workers and Flower."""

from __future__ import annotations

TRIGGER = "walbackup.trigger"
ELECT_ALL = "walbackup.elect_all"
BACKUP_TIMELINE = "walbackup.backup_timeline"
UPLOAD_SEGMENT = "walbackup.upload_segment"
UPLOAD_SEGMENTS = "walbackup.upload_segments"
SCRUB_ALL = "walbackup.scrub_all"
SCRUB_TIMELINES = "walbackup.scrub_timelines"
HEAL_SEGMENT = "walbackup.heal_segment"

SHARED_QUEUE = "walbackup"


def node_queue(node_id: int) -> str:
    """A node's own queue: its ``backup_timeline``, ``upload_segment(s)``,
    ``scrub_timelines`` and ``heal_segment`` tasks."""
    return f"node.{node_id}"
