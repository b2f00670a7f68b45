"""tasks.archive.identity and .guarded against a real Redis and real storage.

Each "node" is an ``ArchiveIdentity`` over its own storage: the cluster's
archive, another directory (a node given another bucket or prefix), or
another S3 endpoint's bucket of the same name on moto.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tasks.archive.guarded import GuardedStorage
from tasks.archive.identity import (
    MARKER_KEY,
    NOT_CHECKED,
    SEEN_FRESH_S,
    ArchiveIdentity,
    Memory,
)
from tasks.errors import ForeignArchive, StorageUnavailable
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage
from tests.fixtures_s3 import MotoServer, make_bucket
from tests.servers import free_port

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def identity(
    node_id: int,
    storage: RemoteStorage,
    state: RedisState,
    clock: Clock,
    *,
    fingerprint: str = "archive",
    memory: Path | None = None,
) -> ArchiveIdentity:
    return ArchiveIdentity(
        node_id, storage, state, threading.Event(), fingerprint=fingerprint,
        memory=Memory.load(memory), clock=clock,
    )  # fmt: skip


def keys(storage: RemoteStorage) -> list[str]:
    return [info.key for info in storage.list("")]


def test_the_first_node_names_the_archive_and_the_others_find_it(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    one, two = identity(1, archive, state, clock), identity(2, archive, state, clock)
    assert not one.ours() and one.problem == NOT_CHECKED  # nothing is used unchecked
    one.check()
    assert one.ours()
    archive_id = state.archive_id()
    assert archive_id and json.loads(archive.read_bytes(MARKER_KEY))["archive_id"] == archive_id
    two.require()
    assert two.ours() and state.archive_id() == archive_id
    assert {n: r["found"] for n, r in state.archive_reports().items()} == {1: True, 2: True}


def test_a_node_with_another_bucket_or_prefix_uses_none_of_it(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    elsewhere = open_storage((tmp_path / "elsewhere").as_uri())
    identity(1, archive, state, clock).check()
    stray = identity(3, elsewhere, state, clock, fingerprint="elsewhere")
    guarded = GuardedStorage(elsewhere, stray)
    with pytest.raises(ForeignArchive, match="is not in this node's storage, where other node"):
        guarded.put_bytes("t/l/x", b"x")
    with pytest.raises(ForeignArchive):
        list(guarded.list(""))
    guarded.probe()  # is the storage up? (stores nothing)
    with pytest.raises(ForeignArchive):
        guarded.probe(write=True)  # S3's would store its probe object
    assert keys(elsewhere) == []  # no marker, no object: nothing written there
    assert not stray.ours() and "node(s) 1" in (stray.problem or "")
    # Another cluster's archive (a marker with another id) is refused too.
    elsewhere.put_bytes(MARKER_KEY, json.dumps({"archive_id": "another"}).encode())
    clock.now += 60
    with pytest.raises(ForeignArchive, match="holds archive another"):
        guarded.create_bytes("t/l/y", b"y")
    assert keys(elsewhere) == [MARKER_KEY]


def test_redis_that_lost_its_data_learns_the_id_from_the_marker(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    one = identity(1, archive, state, clock)
    one.check()
    archive_id = state.archive_id()
    state.r.flushdb()  # our own test database
    clock.now += 61
    one.require()
    assert one.ours() and state.archive_id() == archive_id


def test_a_recreated_bucket_gets_its_marker_back_once_no_node_finds_it(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    one, two = identity(1, archive, state, clock), identity(2, archive, state, clock)
    one.check()
    two.check()
    archive_id = state.archive_id()
    archive.delete(MARKER_KEY)  # the bucket emptied: every node will find it missing
    clock.now += 61
    with pytest.raises(ForeignArchive):
        one.require()  # node 2 found it lately: this could be node 1's storage alone
    # Node 2's sighting ages past SEEN_FRESH_S (as it would, finding it missing too).
    state.report_archive(2, {"ts": time.time() - SEEN_FRESH_S - 1, "fp": "archive", "found": 1})
    one._memory.others_found_at = 0.0
    clock.now += 61
    one.require()
    assert one.ours()
    assert json.loads(archive.read_bytes(MARKER_KEY))["archive_id"] == archive_id


def test_redis_losing_its_data_never_lets_a_stray_node_name_the_archive(
    tmp_path: Path, state: RedisState
) -> None:
    """Found by the review of this change: after a FLUSHDB the node whose
    storage lacked the marker (it was refusing it) found neither an id in
    Redis nor a marker, made a new id, and the nodes with the real archive
    then took themselves for the foreign ones: the cluster uploaded to the
    wrong storage and removed its WAL. Each node remembers the id (in its
    WORKDIR), and only a node with most nodes' settings writes a marker."""
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    elsewhere = open_storage((tmp_path / "elsewhere").as_uri())
    one = identity(1, archive, state, clock, memory=tmp_path / "w1" / ".walbackup-archive")
    two = identity(2, archive, state, clock, memory=tmp_path / "w2" / ".walbackup-archive")
    (tmp_path / "w1").mkdir(), (tmp_path / "w2").mkdir(), (tmp_path / "w3").mkdir()
    stray_memory = tmp_path / "w3" / ".walbackup-archive"
    stray = identity(3, elsewhere, state, clock, fingerprint="elsewhere", memory=stray_memory)
    one.check(), two.check(), stray.check()
    archive_id = state.archive_id()
    assert one.ours() and two.ours() and not stray.ours()
    state.r.flushdb()  # our own test database
    clock.now += 61
    stray.check()  # first after the loss, as the faster re-checking node would be
    assert not stray.ours() and keys(elsewhere) == []
    assert state.archive_id() == archive_id  # the id it remembered, not a new one
    one.check()
    assert one.ours()
    # Restarted meanwhile (nothing in memory but its WORKDIR file): the same.
    state.r.flushdb()
    restarted = identity(3, elsewhere, state, clock, fingerprint="elsewhere", memory=stray_memory)
    restarted.check()
    assert not restarted.ours() and keys(elsewhere) == []
    assert state.archive_id() == archive_id


def test_an_emptied_bucket_gets_its_marker_back_from_a_node_with_most_nodes_settings(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    elsewhere = open_storage((tmp_path / "elsewhere").as_uri())
    one, two = identity(1, archive, state, clock), identity(2, archive, state, clock)
    stray = identity(3, elsewhere, state, clock, fingerprint="elsewhere")
    one.check(), two.check(), stray.check()
    archive.delete(MARKER_KEY)  # the bucket emptied
    stale = time.time() - SEEN_FRESH_S - 1
    for node in (1, 2):  # ... long enough ago that nobody has found it since
        state.report_archive(node, {"ts": time.time(), "fp": "archive", "found": False})
    for node in (one, two, stray):
        node._memory.others_found_at = stale
    clock.now += 61
    stray.check()  # first to look: it must not take the archive to its storage
    assert not stray.ours() and keys(elsewhere) == []
    one.check()
    assert one.ours() and keys(archive) == [MARKER_KEY]


def test_a_confirmed_node_rides_out_a_storage_outage_an_unconfirmed_one_does_not(
    moto_server: MotoServer, state: RedisState
) -> None:
    bucket = "walbackup-identity-outage"
    make_bucket(moto_server.endpoint_url, bucket)
    url = f"s3://{bucket}/prefix"
    clock = Clock()
    confirmed = identity(
        1, open_storage(url, s3_endpoint_url=moto_server.endpoint_url), state, clock
    )
    confirmed.check()
    # The endpoint stops answering.
    dead = open_storage(
        url,
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        max_attempts=1,
        connect_timeout_s=0.5,
    )
    confirmed.storage = dead
    clock.now += 61
    confirmed.require()  # the verdict stands: the outage is the callers' error to meet
    assert confirmed.ours()
    unconfirmed = identity(2, dead, state, clock)
    with pytest.raises(StorageUnavailable):
        unconfirmed.require()
    assert not unconfirmed.ours()


def test_another_endpoint_with_a_bucket_of_the_same_name_is_refused(
    moto_server: MotoServer, tmp_path: Path, state: RedisState
) -> None:
    other = MotoServer(free_port(), tmp_path / "other-moto.log")
    other.start()
    try:
        bucket = "walbackup-identity-test"
        make_bucket(moto_server.endpoint_url, bucket)
        make_bucket(other.endpoint_url, bucket)
        url = f"s3://{bucket}/prefix"
        clock = Clock()
        archive = open_storage(url, s3_endpoint_url=moto_server.endpoint_url)
        stray_storage = open_storage(url, s3_endpoint_url=other.endpoint_url)
        identity(1, archive, state, clock).check()
        stray = identity(2, stray_storage, state, clock)
        with pytest.raises(ForeignArchive, match="node"):
            GuardedStorage(stray_storage, stray).read_bytes("x")
        assert keys(stray_storage) == []
        archive.delete(MARKER_KEY)
    finally:
        other.stop()


def test_an_unreadable_marker_is_never_taken_for_the_archives_id(
    tmp_path: Path, state: RedisState
) -> None:
    clock = Clock()
    archive = open_storage((tmp_path / "archive").as_uri())
    archive.put_bytes(MARKER_KEY, b"not json")
    node = identity(1, archive, state, clock)
    with pytest.raises(ForeignArchive, match="an unreadable marker"):
        node.require()
    assert state.archive_id() is None  # Redis was not given garbage as the id
