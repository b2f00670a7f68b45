"""A segment missing on every node, with complete ones above it (a damaged
disk, a bad restore of the WORKDIR; SPEC §9: bad input gets a clear error and
loses nothing). Backup stops before the hole, as it must: only a contiguous
run is committed. Before, nothing said so (commit_lsn ends at the hole, so
the lag read 0). Now the hole is the timeline's ``last_error``; put back,
backup resumes by itself, the error clears, and the invariant holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    seg_lsn,
    start_cluster,
    ttid_offloaded_by,
)

pytestmark = pytest.mark.integration


def test_a_hole_in_the_wal_is_the_last_error_until_the_segment_is_put_back(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(make_cluster)
    ttid = ttid_offloaded_by(2)
    workdirs = [cluster.workdir(n) for n in NODES]
    with BackupSampler(cluster, ttid) as sampler:
        simulate(workdirs, [ttid], 3, SEG_SIZE)
        cluster.wait_backup(ttid, seg_lsn(4), timeout=60)
        simulate(workdirs, [ttid], 4, SEG_SIZE, start_segno=5)  # segment 4 never came

        def last_error() -> str:
            return cluster.state.timeline(str(ttid)).last_error

        wait_for(lambda: "000000010000000000000004 is missing" in last_error(), 40, "the hole")
        assert cluster.backup_lsn(ttid) == seg_lsn(4)
        simulate(workdirs, [ttid], 1, SEG_SIZE, start_segno=4)  # put back
        cluster.wait_backup(ttid, seg_lsn(9), timeout=60)
    assert last_error() == ""
    archive = Archive(ttid, root=cluster.root / "remote")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=9, expected_end=9)
