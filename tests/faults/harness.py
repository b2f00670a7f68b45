"""The fault suite's common parts: WAL that keeps coming, the archive as the
test sees it, and the SPEC §9 invariant checked after every fault heals.

Invariant (SPEC §9): every segment below ``backup_lsn`` is in the archive and
byte-identical to a good node copy (the simulator's deterministic bytes);
``backup_lsn`` never moved backwards (sampled every 20 ms across the fault);
nothing the nodes had not completed was uploaded; every worker and beat
process is still alive; progress resumed (the time it took is printed).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import PARTIAL_SUFFIX, parse_xlog_file_name, xlog_file_name
from tasks.dev.simulate import expected_segment_bytes, simulate
from tasks.state.keys import lease_key
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

NODES = (1, 2, 3)


def seg_lsn(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG_SIZE)


def timeline_dir(workdir: Path, ttid: TenantTimelineId) -> Path:
    return workdir / ttid.tenant_id / ttid.timeline_id


def write_segment(
    workdir: Path, ttid: TenantTimelineId, segno: int, body: bytes, mode: int = 0o644
) -> Path:
    """As a WAL writer does: the .partial first, then the rename."""
    final = timeline_dir(workdir, ttid) / xlog_file_name(segno, SEG_SIZE)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.write_bytes(body)
    partial.chmod(mode)
    os.replace(partial, final)
    return final


def ttid_offloaded_by(node: int) -> TenantTimelineId:
    """A new timeline that ``determine_offloader`` gives to ``node`` while
    nodes 1-3 are all caught up and healthy (index = timeline id % 3)."""
    value = int(secrets.token_hex(16), 16) // 3 * 3 + NODES.index(node)
    return TenantTimelineId(secrets.token_hex(16), f"{value:032x}")


class Archive:
    """The remote copy of one timeline, read behind the system's back: a
    ``file://`` directory, or a bucket read straight from moto (not through
    any fault proxy)."""

    def __init__(
        self,
        ttid: TenantTimelineId,
        *,
        root: Path | None = None,
        s3: S3Client | None = None,
        bucket: str = "",
        prefix: str = "",
    ) -> None:
        self.ttid = ttid
        self.root = root
        self.s3 = s3
        self.bucket = bucket
        self.key_prefix = f"{prefix}/" if prefix else ""

    def key(self, segno: int) -> str:
        return f"{self.ttid.tenant_id}/{self.ttid.timeline_id}/{xlog_file_name(segno, SEG_SIZE)}"

    def read(self, segno: int) -> bytes | None:
        if self.root is not None:
            path = self.root / self.key(segno)
            return path.read_bytes() if path.exists() else None
        assert self.s3 is not None
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key_prefix + self.key(segno))
        except self.s3.exceptions.NoSuchKey:
            return None
        return obj["Body"].read()

    def segnos(self) -> set[int]:
        names: list[str] = []
        if self.root is not None:
            directory = self.root / self.ttid.tenant_id / self.ttid.timeline_id
            names = [p.name for p in directory.iterdir()] if directory.exists() else []
        else:
            assert self.s3 is not None
            prefix = f"{self.key_prefix}{self.ttid.tenant_id}/{self.ttid.timeline_id}/"
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            names = [o["Key"].rsplit("/", 1)[1] for page in pages for o in page.get("Contents", [])]
        return {parse_xlog_file_name(n, SEG_SIZE)[1] for n in names if len(n) == 24}

    def put(self, segno: int, body: bytes) -> None:
        """Replace the object behind the system's back."""
        if self.root is not None:
            (self.root / self.key(segno)).write_bytes(body)
        else:
            assert self.s3 is not None
            self.s3.put_object(Bucket=self.bucket, Key=self.key_prefix + self.key(segno), Body=body)

    def delete(self, segno: int) -> None:
        if self.root is not None:
            (self.root / self.key(segno)).unlink()
        else:
            assert self.s3 is not None
            self.s3.delete_object(Bucket=self.bucket, Key=self.key_prefix + self.key(segno))


class WalWriter:
    """Writes the timeline's next segment into ``workdirs`` ``rate`` times a
    second, in a thread, until stopped: WAL keeps coming during a fault."""

    def __init__(
        self, workdirs: list[Path], ttid: TenantTimelineId, next_segno: int, rate: float = 4.0
    ) -> None:
        self.workdirs = workdirs
        self.ttid = ttid
        self.next_segno = next_segno
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def write(self, count: int) -> None:
        simulate(self.workdirs, [self.ttid], count, SEG_SIZE, start_segno=self.next_segno)
        self.next_segno += count

    def _run(self) -> None:
        while not self._stop.wait(1 / self.rate):
            self.write(1)

    def start(self) -> WalWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop writing; returns the first segno not written."""
        self._stop.set()
        self._thread.join()
        return self.next_segno


def start_cluster(
    make_cluster: Callable[..., Cluster],
    workdirs: dict[int, Path] | None = None,
    prefix: dict[int, list[str]] | None = None,
    settings: dict[str, str] | None = None,
    **options: str,
) -> Cluster:
    """Nodes 1-3 (``workdirs``: other WORKDIRs than the cluster's; ``prefix``:
    a command to run a node under; ``settings``: more environment;
    ``options``: ``make_cluster``'s, e.g. ``remote_storage``) and beat,
    every node heartbeating."""
    cluster = make_cluster(settings=settings, **options) if settings else make_cluster(**options)
    for n in NODES:
        env = {"WALBACKUP_WORKDIR": str(workdirs[n])} if workdirs else {}
        cluster.start_node(n, env, (prefix or {}).get(n))
    cluster.start_beat()
    cluster.wait_nodes(list(NODES))
    return cluster


def backed_up_timeline(
    cluster: Cluster, workdirs: list[Path], offloader: int, segments: int = 4
) -> tuple[TenantTimelineId, WalWriter]:
    """A new timeline that ``offloader`` backs up, with ``segments`` segments
    (from segno 1) written and backed up; its writer goes on from there."""
    ttid = ttid_offloaded_by(offloader)
    writer = WalWriter(workdirs, ttid, next_segno=1)
    writer.write(segments)
    cluster.wait_backup(ttid, seg_lsn(segments + 1), timeout=30)

    def settled() -> bool:
        # The node that saw the WAL first may have been elected among the
        # peers it knew, and still hold the lease: until its next heartbeat
        # round hands it over, it claims new segments itself.
        holder = cluster.state.r.get(lease_key(str(ttid)))
        offloaded = cluster.state.timeline(str(ttid)).offloader == offloader
        return offloaded and (holder is None or holder.startswith(f"{offloader}."))

    wait_for(settled, 10, f"node {offloader} to be the only offloader")
    return ttid, writer


def scrape(port: int, name: str) -> float:
    """Sum of a metric's samples on a node's /metrics (0 if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def time_to_advance(
    cluster: Cluster, ttid: TenantTimelineId, since: float, timeout: float
) -> float:
    """Seconds from ``since`` (monotonic) until backup_lsn first moves."""
    before = cluster.backup_lsn(ttid)
    wait_for(
        lambda: cluster.backup_lsn(ttid) != before,
        timeout,
        f"backup_lsn of {ttid} to move past {before}",
        interval=0.02,
    )
    return time.monotonic() - since


def assert_invariant(
    cluster: Cluster,
    archive: Archive,
    sampler: BackupSampler,
    *,
    first_segno: int,
    written_end: int,
    expected_end: int | None = None,
) -> None:
    """SPEC §9 after a fault healed; ``written_end``: first segno no node completed."""
    ttid = archive.ttid
    backup = cluster.backup_lsn(ttid)
    assert backup is not None
    end = backup.segment_number(SEG_SIZE)
    if expected_end is not None:
        assert end == expected_end, f"backup_lsn {backup}, expected segno {expected_end}"
    for segno in range(first_segno, end):
        body = archive.read(segno)
        assert body is not None, f"segno {segno} is below backup_lsn {backup} but not archived"
        assert body == expected_segment_bytes(ttid, segno, SEG_SIZE), (
            f"segno {segno} below backup_lsn {backup} is archived with different bytes"
        )
    above = {s for s in archive.segnos() if s >= written_end}
    assert not above, f"segments no node completed were uploaded: {sorted(above)}"
    samples = sampler.samples
    assert samples == sorted(samples), "backup_lsn moved backwards: " + ", ".join(
        f"{a} -> {b}" for a, b in itertools.pairwise(samples) if b < a
    )
    dead = {name: p.returncode for name, p in cluster.procs.items() if p.poll() is not None}
    assert not dead, f"processes died: {dead}\n{cluster.tail_logs()}"
