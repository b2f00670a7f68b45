"""Prometheus metrics of a node worker (SPEC §4).

Workers run Celery's ``threads`` pool, so the default registry of the one
worker process holds every task's updates: no multiprocess mode needed.

Every metric describes the node that serves it (Prometheus's ``instance``
label tells the nodes apart), except those of the cluster as this node reads
it from Redis each heartbeat round: ``timeline_offloader`` (the same value on
every node holding the timeline) and ``last_heartbeat_timestamp_seconds``
(every node's, labelled ``node``, on every node, so a live node reports a
dead one). Aggregate those with ``max by (timeline)`` / ``max by (node)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BACKED_UP_SEGMENTS = Counter("backed_up_segments", "WAL segments uploaded and committed")
BACKUP_ERRORS = Counter("backup_errors", "Failed segment uploads (each attempt)")


class TimelineSeries(Collector):
    """The gauges a node exports per timeline it holds, built at scrape time
    from one row per timeline. As ``Gauge`` children (an object, a value
    object and a lock per series) three series per timeline took ~15 MiB of
    a node's 10,000 (bench/README.md, fleet ``rss`` shape)."""

    FAMILIES = (
        ("backup_lag_bytes", "commit_lsn - backup_lsn of a timeline on this node"),
        (
            "oldest_unarchived_segment_age_seconds",
            "Seconds since this node's oldest complete segment of a timeline at or above "
            "backup_lsn was written (its mtime); 0 when every complete segment it holds "
            "is archived",
        ),
        (
            "timeline_offloader",
            "Node id of a timeline's elected offloader (the node that takes its upload lease), "
            "as recorded in Redis; 0 when none is elected",
        ),
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[float, float, float]] = {}

    def set(self, timeline: str, lag: float, age: float | None, offloader: float) -> None:
        """``age`` ``None``: unknown this round, the last value stays (0 at first)."""
        with self._lock:
            if age is None:
                row = self._rows.get(timeline)
                age = row[1] if row is not None else 0.0
            self._rows[timeline] = (lag, age, offloader)

    def remove(self, timeline: str) -> None:
        with self._lock:
            self._rows.pop(timeline, None)

    def _families(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc, labels=["timeline"]) for name, doc in self.FAMILIES]

    def describe(self) -> Iterator[Metric]:
        """For the registry's duplicate check, without collecting."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            rows = list(self._rows.items())
        families = self._families()
        for timeline, row in rows:
            for family, value in zip(families, row, strict=True):
                family.add_metric([timeline], value)
        yield from families


TIMELINE_SERIES = TimelineSeries()
REGISTRY.register(TIMELINE_SERIES)
LAST_HEARTBEAT = Gauge(
    "last_heartbeat_timestamp_seconds",
    "Unix time of each node's last heartbeat in Redis, as this node read it",
    ["node"],
)
UPLOAD_SECONDS = Histogram(
    "upload_duration_seconds",
    "Duration of one segment upload",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UPLOADED_BYTES = Counter("uploaded_bytes", "Bytes of WAL uploaded")
DAMAGED_SEGMENTS = Gauge(
    "local_damaged_segments",
    "Segments at or above backup_lsn whose copy on this node is damaged "
    "(wrong size, unreadable, an invalid WAL page header, or outvoted by the other nodes' copies)",
    ["timeline"],
)
INVALID_WAL_HEADERS = Counter(
    "invalid_wal_headers",
    "Complete segment copies on this node refused for an invalid WAL page header "
    "(each time one is found)",
)
ARCHIVE_PROBLEMS = Counter(
    "archive_problems",
    "Segments below backup_lsn the scrubber found missing, short, changed, corrupt or "
    "unrecorded in the archive (each counted once, when found)",
)
ARCHIVE_HEALED = Counter(
    "archive_healed_segments", "Damaged or missing archived segments uploaded again by the scrubber"
)
ARCHIVE_VERIFIED_LSN = Gauge(
    "archive_verified_lsn",
    "End of the run of a timeline's archive, from its start, that the scrubber found whole and "
    "as the ledger says (it stops at the first problem); exported by the offloader",
    ["timeline"],
)
LEFT_OUT_TIMELINES = Gauge(
    "left_out_timelines",
    "Timeline and tenant directories (and the WORKDIR itself) this node cannot read (EACCES, "
    "EIO, a corrupt state file) and so leaves out of its scan: it neither backs them up nor "
    "reports their lag",
)
ARCHIVE_OPEN_PROBLEMS = Gauge(
    "archive_open_problems",
    "Archived segments the scrubber found damaged or missing and could not heal yet; "
    "verified_lsn, and so WAL removal, stops at the first (exported by the offloader)",
    ["timeline"],
)
ARCHIVE_UPKEEP_ERRORS = Counter(
    "archive_upkeep_errors",
    "Failed archive upkeep of a timeline this node offloads (a ledger page write, a scrub "
    "pass, a history file): the storage refused or could not be read",
)
ARCHIVE_VERIFIED_BYTES = Counter(
    "archive_verified_bytes", "Bytes of archived WAL read back and hashed by the deep scrub"
)
ARCHIVED_LSN = Gauge(
    "archived_lsn",
    "Highest LSN of a timeline in the archive, partial segment uploads included",
    ["timeline"],
)
PARTIAL_UPLOADS = Counter("partial_uploads", "Partial segments uploaded and recorded")
PARKED_UPLOADS = Gauge("parked_uploads", "Failed uploads waiting for their retry")
REMOVED_WAL_SEGMENTS = Counter(
    "removed_wal_segments", "Complete local WAL segments deleted below the removal horizon"
)


WAL_SEGMENT_SIZE = Gauge(
    "wal_segment_size_bytes",
    "WALBACKUP_WAL_SEG_SIZE of this node (the alert rules count backup_lag_bytes in segments)",
)


def serve(port: int, seg_size: int) -> None:
    """Serve ``/metrics`` on ``port`` from a daemon thread; ``seg_size``: the
    node's segment size, exported as ``wal_segment_size_bytes``."""
    WAL_SEGMENT_SIZE.set(seg_size)
    start_http_server(port)
