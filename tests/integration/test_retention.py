"""Retain and delete (``tasks.backup.retention``) on real storage (``file://`` and a
moto S3 server) and the private Redis: what goes and what stays, and the
retained start recorded where the scrub and the recovery of backup_lsn read it."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tasks.archive.flush import LedgerFlusher
from tasks.archive.ledger_store import LedgerStore
from tasks.archive.retained import read_archive_start
from tasks.archive.scrubber import DeepBudget, Scrubber
from tasks.backup.recovery import remote_backup_end
from tasks.backup.retention import delete_timeline, plan_delete, plan_retain, retain
from tasks.core.election import PeerInfo
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry, encode
from tasks.core.lsn import Lsn
from tasks.core.partials import partial_object
from tasks.core.retention import marker_bytes
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput
from tasks.state.keys import ledger_key, partials_key, tl_key
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tasks.storage import RemoteStorage, open_storage, timeline_prefix
from tasks.storage.local import LocalStorage

pytestmark = pytest.mark.integration

SEG = 1 << 20


def name(segno: int) -> str:
    return xlog_file_name(segno, SEG)


def partial(segno: int) -> str:
    return partial_object(segno, Lsn(segno * SEG + 0x100), SEG).name


def segment_bytes(segno: int) -> bytes:
    return segno.to_bytes(4, "big") * (SEG // 4)


@pytest.fixture
def ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RemoteStorage]:
    if request.param == "file":
        backend = open_storage((tmp_path / "remote").as_uri())
    else:
        endpoint = request.getfixturevalue("moto_server").endpoint_url
        backend = open_storage(request.getfixturevalue("s3_bucket_url"), s3_endpoint_url=endpoint)
    yield backend
    backend.close()


def fill(storage: RemoteStorage, ttid: TenantTimelineId, segnos: range, *extra: str) -> None:
    prefix = timeline_prefix(ttid)
    for segno in segnos:
        storage.put_bytes(prefix + name(segno), segment_bytes(segno))
    for other in extra:
        storage.put_bytes(prefix + other, b"x" * 10)


def names(storage: RemoteStorage, ttid: TenantTimelineId) -> list[str]:
    prefix = timeline_prefix(ttid)
    return [info.key[len(prefix) :] for info in storage.list(prefix)]


def wal_names(storage: RemoteStorage, ttid: TenantTimelineId) -> list[str]:
    """``names`` but the ledger's (``_ledger/…``: tested in test_archive_ledger)."""
    return [n for n in names(storage, ttid) if not n.startswith("_ledger/")]


def backed_up_to(state: RedisState, ttid: TenantTimelineId, segno: int) -> None:
    pipe = state.pipeline()
    state.seed_timeline(str(ttid), Lsn(SEG), SEG, pipe)
    pipe.execute()
    state.raise_backup_lsn(str(ttid), Lsn(segno * SEG))
    state.register([str(ttid)])


def test_retain_deletes_below_the_cutoff_and_records_the_new_start(
    storage: RemoteStorage, state: RedisState, ttid: TenantTimelineId
) -> None:
    fill(storage, ttid, range(1, 13), partial(3), partial(12), "00000002.history")
    backed_up_to(state, ttid, 12)
    state.r.hset(partials_key(str(ttid)), mapping={partial(3): "uploaded", partial(12): "uploaded"})

    plan = plan_retain(storage, state, ttid, name(8), keep_segments=1, default_seg_size=SEG)
    assert [o.name for o in plan.objects] == sorted([name(s) for s in range(1, 8)] + [partial(3)])
    done = retain(storage, state, plan)
    assert (done.segments, done.partials, done.bytes) == (7, 1, 7 * SEG + 10)
    kept = [name(s) for s in range(8, 13)] + [partial(12), "00000002.history", "_retained"]
    listed = names(storage, ttid)
    assert [n for n in listed if not n.startswith("_ledger/")] == sorted(kept)
    # The deletion is recorded beside the ledger's pages.
    [record] = [n for n in listed if n.startswith("_ledger/deleted-")]
    deletion = json.loads(storage.read_bytes(timeline_prefix(ttid) + record))
    assert (deletion["command"], deletion["segments"], deletion["archive_start_lsn"]) == (
        "retain",
        7,
        "0/800000",
    )
    assert deletion["first_segment"] == name(1) and deletion["last_segment"] == name(7)
    assert read_archive_start(storage, ttid) == Lsn(8 * SEG)
    assert state.archive_start(str(ttid)) == Lsn(8 * SEG)
    assert state.partials(str(ttid)) == {partial(12): "uploaded"}

    # A rerun, or a retain reaching less far, changes nothing.
    again = plan_retain(storage, state, ttid, "0/500000", keep_segments=1, default_seg_size=SEG)
    assert retain(storage, state, again).objects == 0
    assert read_archive_start(storage, ttid) == Lsn(8 * SEG)
    assert state.archive_start(str(ttid)) == Lsn(8 * SEG)

    # Redis loses its data: the archive, counted from the marker, gives
    # backup_lsn back (from the timeline's start it would be "nothing archived"),
    # and the archive's start is recorded again.
    state.r.flushdb()
    assert remote_backup_end(storage, str(ttid), Lsn(SEG), SEG, state) == Lsn(13 * SEG)
    assert state.archive_start(str(ttid)) == Lsn(8 * SEG)


def test_recovery_after_redis_loss_gives_back_the_partial_that_continues_the_archive(
    storage: RemoteStorage, state: RedisState, ttid: TenantTimelineId
) -> None:
    """archived_lsn (status, the gauge) is the newest partial upload of the
    segment after the archive's contiguous run; Redis lost it with the rest,
    and the listing that recovers backup_lsn finds it again. A partial of a
    segment past a hole, or below the run, is not that."""
    older = partial_object(5, Lsn(5 * SEG + 0x100), SEG).name
    newer = partial_object(5, Lsn(5 * SEG + 0x8000), SEG).name
    past_hole = partial_object(8, Lsn(8 * SEG + 0x9000), SEG).name
    fill(storage, ttid, range(1, 5), partial(2), older, newer, past_hole)
    fill(storage, ttid, range(7, 8))
    assert remote_backup_end(storage, str(ttid), Lsn(SEG), SEG, state) == Lsn(5 * SEG)
    assert state.timeline(str(ttid)).archived_lsn == Lsn(5 * SEG + 0x8000)
    # Never lowered: a later listing that finds less (GC deleted it) keeps it.
    storage.delete(timeline_prefix(ttid) + newer)
    remote_backup_end(storage, str(ttid), Lsn(SEG), SEG, state)
    assert state.timeline(str(ttid)).archived_lsn == Lsn(5 * SEG + 0x8000)


def test_retain_refuses_above_the_limit_or_without_backup_lsn(
    storage: RemoteStorage, state: RedisState, ttid: TenantTimelineId
) -> None:
    fill(storage, ttid, range(1, 13))
    with pytest.raises(InvalidInput, match="no backup_lsn"):
        plan_retain(storage, state, ttid, name(3), keep_segments=1, default_seg_size=SEG)
    backed_up_to(state, ttid, 12)
    for before, keep in ((name(12), 1), ("0/C00000", 1), (name(13), 1), (name(10), 3)):
        with pytest.raises(InvalidInput, match=f"segments from {name(12 - keep)} on are kept"):
            plan_retain(storage, state, ttid, before, keep_segments=keep, default_seg_size=SEG)
    assert plan_retain(storage, state, ttid, name(11), 1, SEG).cutoff == 11
    assert plan_retain(storage, state, ttid, "0/B7FFFF", 1, SEG).cutoff == 11
    assert names(storage, ttid) == [name(s) for s in range(1, 13)]  # nothing deleted


def test_the_scrub_leaves_retained_segments_alone(
    tmp_path: Path, state: RedisState, ttid: TenantTimelineId
) -> None:
    """The offloader still holds the old segments and the ledger their
    entries: without the recorded start its scrub would report each as
    missing and upload it again."""
    storage = LocalStorage(tmp_path / "remote")
    local = tmp_path / "node"
    local.mkdir(parents=True)
    for segno in range(1, 10):
        (local / name(segno)).write_bytes(segment_bytes(segno))
        sha = hashlib.sha256(segment_bytes(segno)).hexdigest()
        entry = encode(LedgerEntry(SEG, sha, ""))
        state.r.hset(ledger_key(str(ttid)), str(segno), entry)
    fill(storage, ttid, range(1, 10))
    backed_up_to(state, ttid, 10)
    retain(storage, state, plan_retain(storage, state, ttid, name(6), 1, SEG))

    def copy(t: TenantTimelineId, segno: int) -> Path | None:
        path = local / name(segno)
        return path if path.exists() else None

    flusher = LedgerFlusher(1, state, LedgerStore(storage), copy)
    scrubber = Scrubber(state, flusher, DeepBudget(0), copy, lambda *a: False)
    result = scrubber.run(ttid, SEG, Lsn(10 * SEG), 1)
    assert (result.open, result.healed, result.verified_lsn) == ([], [], Lsn(10 * SEG))
    assert names(storage, ttid)[0] == name(6)

    state.r.hdel(tl_key(str(ttid)), "archive_start_lsn")
    found: list[int | None] = []
    for _ in range(3):  # the rolling sweep comes round to them
        result = scrubber.run(ttid, SEG, Lsn(10 * SEG), 1)
        found += [p.segno for p in result.open + result.healed]
    assert found == list(range(1, 6))


def heartbeat(state: RedisState, ttid: TenantTimelineId, node_id: int, age_s: float) -> None:
    peer = PeerInfo(node_id, Lsn(13 * SEG), Lsn(SEG), Lsn(12 * SEG), time.time() - age_s)
    state.publish_heartbeats(node_id, [(str(ttid), peer_to_json(peer, SEG, None))], peer.ts)


def test_delete_removes_every_object_and_then_the_redis_state(
    storage: RemoteStorage, state: RedisState, ttid: TenantTimelineId
) -> None:
    other = TenantTimelineId(ttid.tenant_id, secrets.token_hex(16))
    fill(storage, ttid, range(1, 6), partial(5), "_retained", "_ledger/000000010000000000000001")
    fill(storage, other, range(1, 3))
    backed_up_to(state, ttid, 5)
    backed_up_to(state, other, 2)
    heartbeat(state, ttid, node_id=2, age_s=0)

    plan = plan_delete(storage, state, ttid, heartbeat_timeout_s=5, default_seg_size=SEG)
    assert plan.live_nodes == [2]
    with pytest.raises(InvalidInput, match=r"held by live node\(s\) \[2\]"):
        delete_timeline(storage, state, plan, heartbeat_timeout_s=5)
    assert len(names(storage, ttid)) == 8

    heartbeat(state, ttid, node_id=2, age_s=3600)  # the node left (dead since)
    plan = plan_delete(storage, state, ttid, heartbeat_timeout_s=5, default_seg_size=SEG)
    assert (plan.live_nodes, plan.dead_nodes) == ([], [2])
    described = plan.describe()
    assert (described["objects"], described["segments"], described["other"]) == (8, 5, 2)
    assert (described["first_segment"], described["last_segment"]) == (name(1), name(5))
    result = delete_timeline(storage, state, plan, heartbeat_timeout_s=5)
    assert result.complete and result.deleted.objects == 8
    assert names(storage, ttid) == []
    assert state.registered() == [str(other)]
    assert state.timeline(str(ttid)).backup_lsn is None and state.peers(str(ttid)) == []
    assert names(storage, other) == [name(1), name(2)]
    # Done already: a rerun deletes nothing and succeeds.
    rerun = plan_delete(storage, state, ttid, heartbeat_timeout_s=5, default_seg_size=SEG)
    assert delete_timeline(storage, state, rerun, heartbeat_timeout_s=5).deleted.objects == 0


class RacedRetain(LocalStorage):
    """A ``file://`` archive where another retain, reaching less far, writes
    its lower start while this one deletes (the marker has no conditional
    write): what two operators running retain at once look like."""

    lower: bytes | None = None

    def delete_many(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        if self.lower is not None and keys:
            marker, self.lower = self.lower, None
            self.put_bytes(keys[0].rsplit("/", 1)[0] + "/_retained", marker)
        return super().delete_many(keys)


def test_a_concurrent_retain_never_leaves_the_marker_below_what_was_deleted(
    tmp_path: Path, state: RedisState, ttid: TenantTimelineId
) -> None:
    """A restore takes a missing segment below the marker for retained, and
    one above it, which the ledger records, for lost: the marker must end at
    least at what this retain deleted."""
    storage = RacedRetain(tmp_path / "remote")
    fill(storage, ttid, range(1, 13))
    backed_up_to(state, ttid, 12)
    storage.lower = marker_bytes(Lsn(3 * SEG), SEG)
    plan = plan_retain(storage, state, ttid, name(8), keep_segments=1, default_seg_size=SEG)
    retain(storage, state, plan)
    assert storage.lower is None  # the other retain did write meanwhile
    assert read_archive_start(storage, ttid) == Lsn(8 * SEG)
