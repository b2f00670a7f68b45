"""What the local WAL removal tests look at: a node's held segments and its state file."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import SEGMENT_NAME_RE, parse_xlog_file_name
from tasks.state.state_file import STATE_FILE_NAME, TimelineStateFile, read_state_file
from tests.cluster import SEG_SIZE, Cluster, wait_for

REMOVAL_ON = {
    "WALBACKUP_REMOVE_WAL": "true",
    "WALBACKUP_STATE_FILE_INTERVAL": "1",
    "WALBACKUP_SCRUB_INTERVAL": "1",
}
"""Removal goes by the lowest of Redis's backup_lsn, the state file's, which
lags by up to ``WALBACKUP_STATE_FILE_INTERVAL``, and the scrubber's
verified_lsn, which lags by up to ``WALBACKUP_SCRUB_INTERVAL`` (30 s each by
default): 1 s here, so that the tests see removal within seconds."""


def timeline_dir(workdir: Path, ttid: TenantTimelineId) -> Path:
    return workdir / ttid.tenant_id / ttid.timeline_id


def held(workdir: Path, ttid: TenantTimelineId) -> list[int]:
    """The segnos of the complete segment files (not ``.partial``) a node holds."""
    found = []
    try:
        entries = list(os.scandir(timeline_dir(workdir, ttid)))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not SEGMENT_NAME_RE.fullmatch(entry.name):
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            continue  # removed while we looked
        if size == SEG_SIZE:
            found.append(parse_xlog_file_name(entry.name, SEG_SIZE)[1])
    return sorted(found)


def wait_held(
    cluster: Cluster, node: int, ttid: TenantTimelineId, expected: list[int], timeout: float = 20
) -> None:
    """Until node ``node`` holds exactly ``expected`` (removal runs every few seconds)."""
    try:
        wait_for(lambda: held(cluster.workdir(node), ttid) == expected, timeout, "removal")
    except AssertionError:
        now = held(cluster.workdir(node), ttid)
        raise AssertionError(
            f"node {node} holds {now}, expected {expected}\n{cluster.tail_logs()}"
        ) from None


def state_of(workdir: Path, ttid: TenantTimelineId) -> TimelineStateFile:
    recorded = read_state_file(timeline_dir(workdir, ttid) / STATE_FILE_NAME)
    assert recorded is not None, f"no state file in {timeline_dir(workdir, ttid)}"
    return recorded


def recorded_backup(workdir: Path, ttid: TenantTimelineId) -> Lsn | None:
    """The backup_lsn in the node's state file, ``None`` without one."""
    recorded = read_state_file(timeline_dir(workdir, ttid) / STATE_FILE_NAME)
    return recorded.backup_lsn if recorded is not None else None
