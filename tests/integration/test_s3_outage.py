"""S3 goes away for a while: errors are counted, retries back off, and the
backup resumes with no gap once the endpoint answers again."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.faults.harness import scrape
from tests.fixtures_s3 import MotoServer, make_bucket, s3_client
from tests.servers import free_port

pytestmark = pytest.mark.integration


def test_s3_outage_counts_errors_backs_off_and_resumes(
    make_cluster: Callable[..., Cluster],
    moto_server: MotoServer,
    s3_bucket_url: str,
) -> None:
    cluster = make_cluster(remote_storage=s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    nodes = [1, 2, 3]
    ports = {n: free_port() for n in nodes}
    for n in nodes:
        cluster.start_node(n, {"WALBACKUP_METRICS_PORT": str(ports[n])})
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    workdirs = [cluster.workdir(n) for n in nodes]

    simulate(workdirs, [ttid], segments=10, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(11, 0, SEG_SIZE), timeout=60)

    moto_server.stop()
    outage_started = time.monotonic()
    simulate(workdirs, [ttid], segments=10, seg_size=SEG_SIZE, start_segno=11)
    wait_for(
        lambda: sum(scrape(ports[n], "backup_errors_total") for n in nodes) > 0,
        30,
        "upload errors to be counted",
    )
    assert cluster.backup_lsn(ttid) == Lsn.from_segment(11, 0, SEG_SIZE)
    assert cluster.state.timeline(str(ttid)).last_error
    time.sleep(max(0.0, 6 - (time.monotonic() - outage_started)))
    errors_during_outage = sum(scrape(ports[n], "backup_errors_total") for n in nodes)
    # parallel_jobs (5) uploads retrying for ~6 s with a backoff growing from
    # 10 ms to 5 s make a few dozen attempts; without backoff it would be
    # thousands.
    assert errors_during_outage < 200

    moto_server.start()
    bucket, prefix = s3_bucket_url.removeprefix("s3://").split("/", 1)
    make_bucket(moto_server.endpoint_url, bucket)  # moto forgot everything
    cluster.wait_backup(ttid, Lsn.from_segment(21, 0, SEG_SIZE), timeout=90)

    client = s3_client(moto_server.endpoint_url)
    for segno in range(11, 21):
        name = xlog_file_name(segno, SEG_SIZE)
        body = client.get_object(
            Bucket=bucket, Key=f"{prefix}/{ttid.tenant_id}/{ttid.timeline_id}/{name}"
        )["Body"].read()
        local = workdirs[0] / ttid.tenant_id / ttid.timeline_id / name
        assert body == local.read_bytes()
    client.close()
    assert sum(scrape(ports[n], "backed_up_segments_total") for n in nodes) >= 20
