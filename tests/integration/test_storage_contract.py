"""The RemoteStorage contract, one suite for both backends: a local directory
(``file://``) and S3 through a real moto server over HTTP (``s3://``)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.errors import (
    BucketMissing,
    ChecksumMismatch,
    InvalidInput,
    NotFound,
    SegmentFileError,
    StorageUnavailable,
)
from tasks.storage import (
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    digest_segment_file,
    open_storage,
    segment_key,
    timeline_prefix,
)
from tasks.storage.base import DELETE_BATCH
from tasks.storage.local import LocalStorage
from tasks.storage.s3 import S3Storage
from tests.fixtures_s3 import MotoServer, make_bucket, s3_client
from tests.servers import free_port

pytestmark = pytest.mark.integration

SEG_SIZE = 16 << 20
MIB = 1 << 20
TIMELINE = TenantTimelineId("a" * 32, "1" * 32)
SIBLING = TenantTimelineId("a" * 32, "2" * 32)  # same tenant
STRANGER = TenantTimelineId("b" * 32, "1" * 32)  # same timeline id, other tenant
KEY = segment_key(TIMELINE, "000000010000000000000001")
BAD_KEYS = ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "", "a/b/", "a\x00b"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes, storage: RemoteStorage | None = None) -> str:
    """What ``UploadResult.md5_hex`` holds: the MD5 where the backend needs it."""
    if storage is not None and not storage.needs_md5:
        return ""
    return hashlib.md5(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(storage: RemoteStorage, key: str, offset: int = 0) -> bytes:
    with storage.open_read(key, offset) as stream:
        return stream.read()


def stored_files(storage: RemoteStorage) -> list[str]:
    """Everything the backend holds: for a directory every file, temp files
    included; for S3 every object (S3 has no partial objects)."""
    if isinstance(storage, LocalStorage):
        files = (p for p in storage.root.rglob("*") if p.is_file())
        return sorted(p.relative_to(storage.root).as_posix() for p in files)
    return [info.key for info in storage.list("")]


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(SEG_SIZE)
    return write(tmp_path_factory.mktemp("wal") / "000000010000000000000001", data), data


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RemoteStorage]:
    if request.param == "file":
        backend = open_storage((tmp_path / "remote").as_uri())
    else:
        server: MotoServer = request.getfixturevalue("moto_server")
        url: str = request.getfixturevalue("s3_bucket_url")
        backend = open_storage(url, s3_endpoint_url=server.endpoint_url)
    yield backend
    backend.close()


def test_round_trip_is_byte_identical(storage: RemoteStorage, segment: tuple[Path, bytes]) -> None:
    path, data = segment
    result = storage.upload_file(KEY, path, SEG_SIZE)
    assert result == UploadResult(
        KEY, SEG_SIZE, sha(data), md5(data, storage), already_present=False
    )
    assert sha(read_all(storage, KEY)) == sha(data)


def test_ranged_reads(storage: RemoteStorage, segment: tuple[Path, bytes]) -> None:
    path, data = segment
    storage.upload_file(KEY, path, SEG_SIZE)
    for offset in (0, 1, 8 * MIB, SEG_SIZE - 1, SEG_SIZE):
        got = read_all(storage, KEY, offset)
        assert (len(got), sha(got)) == (SEG_SIZE - offset, sha(data[offset:])), offset


def test_read_offset_outside_the_object_is_invalid(storage: RemoteStorage, tmp_path: Path) -> None:
    storage.upload_file(KEY, write(tmp_path / "seg", b"x" * 100), 100)
    for offset in (101, -1):
        with pytest.raises(InvalidInput, match=f"offset {offset}"):
            storage.open_read(KEY, offset)


def test_same_bytes_again_is_already_present(
    storage: RemoteStorage, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    storage.upload_file(KEY, path, SEG_SIZE)
    again = storage.upload_file(KEY, path, SEG_SIZE)
    assert again == UploadResult(KEY, SEG_SIZE, sha(data), md5(data, storage), already_present=True)
    assert sha(read_all(storage, KEY)) == sha(data)


def test_different_bytes_raise_checksum_mismatch_and_keep_the_object(
    storage: RemoteStorage, segment: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = segment
    storage.upload_file(KEY, path, SEG_SIZE)
    other = data[:-1] + bytes([data[-1] ^ 0xFF])  # same size, one byte differs
    with pytest.raises(ChecksumMismatch) as caught:
        storage.upload_file(KEY, write(tmp_path / "other", other), SEG_SIZE)
    message = str(caught.value)
    assert KEY in message and sha(data) in message and sha(other) in message
    assert sha(read_all(storage, KEY)) == sha(data)
    assert stored_files(storage) == [KEY]


@pytest.mark.parametrize("delta", [-1, 1], ids=["short", "oversized"])
def test_wrong_size_file_is_refused_and_nothing_written(
    storage: RemoteStorage, tmp_path: Path, delta: int
) -> None:
    path = write(tmp_path / "seg", os.urandom(MIB + delta))
    with pytest.raises(SegmentFileError, match=f"{MIB + delta} bytes, expected {MIB}"):
        storage.upload_file(KEY, path, MIB)
    assert stored_files(storage) == []


def test_missing_local_file_is_a_segment_file_error(storage: RemoteStorage, tmp_path: Path) -> None:
    with pytest.raises(SegmentFileError, match="cannot open"):
        storage.upload_file(KEY, tmp_path / "gone", MIB)
    assert stored_files(storage) == []


def upload_timelines(storage: RemoteStorage, tmp_path: Path) -> dict[str, bytes]:
    """Three small segments in each of three timelines; returns key -> bytes."""
    uploaded = {}
    for ttid in (TIMELINE, SIBLING, STRANGER):
        for segno in (1, 2, 3):
            key = segment_key(ttid, f"0000000100000000000000{segno:02X}")
            data = os.urandom(1000 + segno)
            storage.upload_file(key, write(tmp_path / "seg", data), len(data))
            uploaded[key] = data
    return uploaded


def test_list_by_prefix(storage: RemoteStorage, tmp_path: Path) -> None:
    uploaded = upload_timelines(storage, tmp_path)
    everything = [(key, len(data)) for key, data in sorted(uploaded.items())]
    prefix = timeline_prefix(TIMELINE)

    def listed(prefix: str) -> list[tuple[str, int]]:
        infos = list(storage.list(prefix))
        for info in infos:  # S3's ETag of a single-part upload is its MD5
            assert info.etag in (None, hashlib.md5(uploaded[info.key]).hexdigest())
        return [(i.key, i.size) for i in infos]

    assert listed("") == everything
    assert listed(prefix) == [i for i in everything if i[0].startswith(prefix)]
    assert len(list(storage.list(prefix))) == 3
    assert [i.key for i in storage.list(prefix + "000000010000000000000002")] == [
        segment_key(TIMELINE, "000000010000000000000002")
    ]
    assert list(storage.list(timeline_prefix(TenantTimelineId("c" * 32, "1" * 32)))) == []
    # From a key on (what the scrub lists): only the keys after it.
    second = segment_key(TIMELINE, "000000010000000000000002")
    assert [i.key for i in storage.list(prefix, start_after=second)] == [
        k for k, _ in everything if k.startswith(prefix) and k > second
    ]
    assert listed(prefix) == [(k, n) for k, n in everything if k.startswith(prefix)]


def test_delete_prefix_removes_only_that_timeline(storage: RemoteStorage, tmp_path: Path) -> None:
    uploaded = upload_timelines(storage, tmp_path)
    assert storage.delete_prefix(timeline_prefix(TIMELINE)) == 3
    survivors = sorted(k for k in uploaded if not k.startswith(timeline_prefix(TIMELINE)))
    assert [i.key for i in storage.list("")] == survivors
    for key in survivors:
        assert read_all(storage, key) == uploaded[key]
    with pytest.raises(NotFound):
        storage.open_read(KEY)
    assert storage.delete_prefix(timeline_prefix(TIMELINE)) == 0


def test_delete_many_takes_more_than_one_request_of_keys(storage: RemoteStorage) -> None:
    """More keys than one S3 DeleteObjects takes (1,000), missing ones among
    them; a bad key stops the call before its batch is sent."""
    keys = [segment_key(TIMELINE, f"{n:024X}") for n in range(1, DELETE_BATCH + 4)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put_bytes(key, b"x"), keys))
    other = segment_key(SIBLING, "000000010000000000000001")
    storage.put_bytes(other, b"y")
    never = segment_key(TIMELINE, "0000000100000000000000FF")
    assert storage.delete_many([*keys, never]) == len(keys) + 1
    assert [i.key for i in storage.list("")] == [other]
    storage.put_bytes(KEY, b"z")
    with pytest.raises(InvalidInput):
        storage.delete_many([KEY, "../x"])
    assert read_all(storage, KEY) == b"z"  # in the refused batch


def test_put_bytes_replaces_an_object(storage: RemoteStorage) -> None:
    key = timeline_prefix(TIMELINE) + "_retained"
    storage.put_bytes(key, b"first")
    storage.put_bytes(key, b"second, longer")
    assert read_all(storage, key) == b"second, longer"
    assert [(i.key, i.size) for i in storage.list("")] == [(key, 14)]
    assert stored_files(storage) == [key]  # no temp file left beside it
    with pytest.raises(InvalidInput):
        storage.put_bytes("../x", b"no")


def test_upload_with_the_callers_digest(
    storage: RemoteStorage, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    digest = digest_segment_file(path, SEG_SIZE, storage.needs_md5)
    result = storage.upload_file(KEY, path, SEG_SIZE, digest=digest)
    assert result == UploadResult(
        KEY, SEG_SIZE, sha(data), md5(data, storage), already_present=False
    )
    again = storage.upload_file(KEY, path, SEG_SIZE, digest=digest)
    assert again.already_present
    assert read_all(storage, KEY) == data


def test_file_changed_since_hashed_is_refused_and_nothing_kept(
    storage: RemoteStorage, tmp_path: Path
) -> None:
    """The caller hashed other bytes than the file now holds (same size)."""
    hashed, now = os.urandom(MIB), os.urandom(MIB)
    digest = digest_segment_file(write(tmp_path / "seg", hashed), MIB)
    path = write(tmp_path / "seg", now)
    with pytest.raises(SegmentFileError, match="changed between being hashed and being stored"):
        storage.upload_file(KEY, path, MIB, digest=digest)
    assert stored_files(storage) == []
    assert storage.upload_file(KEY, path, MIB).sha256_hex == sha(now)


def test_digest_of_another_size_is_refused(storage: RemoteStorage, tmp_path: Path) -> None:
    path = write(tmp_path / "seg", b"x" * 100)
    digest = SegmentDigest(hashlib.sha256(b"x" * 99).digest(), hashlib.md5(b"x" * 99).digest(), 99)
    with pytest.raises(SegmentFileError, match="covers 99 bytes, expected 100"):
        storage.upload_file(KEY, path, 100, digest=digest)
    assert stored_files(storage) == []


def test_delete_one_object(storage: RemoteStorage, tmp_path: Path) -> None:
    uploaded = upload_timelines(storage, tmp_path)
    victim = segment_key(TIMELINE, "000000010000000000000002")
    storage.delete(victim)
    with pytest.raises(NotFound):
        storage.open_read(victim)
    assert [i.key for i in storage.list("")] == sorted(k for k in uploaded if k != victim)
    storage.delete(victim)  # gone already: not an error
    storage.delete(segment_key(STRANGER, "0000000100000000000000FF"))  # never there
    storage.delete(timeline_prefix(SIBLING).rstrip("/"))  # a "directory" is no object
    assert len(list(storage.list(timeline_prefix(SIBLING)))) == 3
    with pytest.raises(InvalidInput):
        storage.delete("../x")


def test_probe_passes_on_healthy_storage(storage: RemoteStorage) -> None:
    storage.probe()
    assert stored_files(storage) == []  # leaves nothing behind


def test_write_probes_pass_on_healthy_storage_and_pile_nothing_up(storage: RemoteStorage) -> None:
    storage.probe(write=True)
    left = stored_files(storage)  # S3: its one probe object
    assert len(left) <= 1
    storage.probe(write=True)
    assert stored_files(storage) == left


def test_probe_of_a_vanished_directory_is_storage_unavailable(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "remote").as_uri())
    (tmp_path / "remote").rmdir()
    with pytest.raises(StorageUnavailable, match="not usable"):
        storage.probe()


def test_missing_key_is_not_found(storage: RemoteStorage) -> None:
    with pytest.raises(NotFound, match=KEY):
        storage.open_read(KEY)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(storage: RemoteStorage, tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "seg", b"x" * 100)
    with pytest.raises(InvalidInput):
        storage.upload_file(key, path, 100)
    with pytest.raises(InvalidInput):
        storage.open_read(key)
    assert stored_files(storage) == []


@pytest.mark.parametrize("prefix", ["../", "/", "a//", "..", "a\\b/"])
def test_bad_prefixes_are_refused(storage: RemoteStorage, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        storage.list(prefix)
    with pytest.raises(InvalidInput):
        storage.delete_prefix(prefix)


# --- file:// under concurrent writers ---------------------------------------

WRITERS = 8
RACE_SIZE = 4 * MIB

Outcome = tuple[str, bool | str]  # ("ok", already_present) or ("mismatch", message)


def upload_outcome(storage: RemoteStorage, path: Path) -> Outcome:
    try:
        return "ok", storage.upload_file(KEY, path, RACE_SIZE).already_present
    except ChecksumMismatch as exc:
        return "mismatch", str(exc)


def race_threads(storage: RemoteStorage, paths: list[Path]) -> list[Outcome]:
    """One writer thread per path, all through one storage object."""
    barrier = threading.Barrier(len(paths))

    def one(path: Path) -> Outcome:
        barrier.wait()
        return upload_outcome(storage, path)

    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(one, paths))


def _process_writer(url: str, path: Path, barrier: Any, results: Any, index: int) -> None:
    storage = open_storage(url)
    barrier.wait()
    try:
        results.put((index, upload_outcome(storage, path)))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((index, ("error", repr(exc))))


def race_processes(storage: RemoteStorage, paths: list[Path]) -> list[Outcome]:
    """One writer process per path, each opening the storage by its URL."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(paths)), ctx.Queue()
    procs = [
        ctx.Process(target=_process_writer, args=(storage.url, path, barrier, results, i))
        for i, path in enumerate(paths)
    ]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    return [outcomes[i] for i in range(len(paths))]


@pytest.mark.parametrize("race", [race_threads, race_processes], ids=["threads", "processes"])
def test_concurrent_writers_of_the_same_bytes_all_succeed(
    tmp_path: Path, race: Callable[[RemoteStorage, list[Path]], list[Outcome]]
) -> None:
    data = os.urandom(RACE_SIZE)
    paths = [write(tmp_path / f"writer{i}", data) for i in range(WRITERS)]
    storage = open_storage((tmp_path / "remote").as_uri())
    outcomes = race(storage, paths)
    assert sorted(outcomes) == [("ok", False)] + [("ok", True)] * (WRITERS - 1)
    assert stored_files(storage) == [KEY]
    assert read_all(storage, KEY) == data


@pytest.mark.parametrize("race", [race_threads, race_processes], ids=["threads", "processes"])
def test_concurrent_writers_of_different_bytes_one_wins(
    tmp_path: Path, race: Callable[[RemoteStorage, list[Path]], list[Outcome]]
) -> None:
    datas = [os.urandom(RACE_SIZE) for _ in range(WRITERS)]
    paths = [write(tmp_path / f"writer{i}", data) for i, data in enumerate(datas)]
    storage = open_storage((tmp_path / "remote").as_uri())
    outcomes = race(storage, paths)
    winners = [i for i, outcome in enumerate(outcomes) if outcome == ("ok", False)]
    assert len(winners) == 1, outcomes
    assert all(kind == "mismatch" for i, (kind, _) in enumerate(outcomes) if i != winners[0])
    assert stored_files(storage) == [KEY]
    assert read_all(storage, KEY) == datas[winners[0]]


def test_concurrent_writers_through_one_storage_object(
    storage: RemoteStorage, tmp_path: Path
) -> None:
    data = os.urandom(RACE_SIZE)
    outcomes = race_threads(storage, [write(tmp_path / "seg", data)] * WRITERS)
    # Not "exactly one created": moto does not make If-None-Match atomic.
    assert {kind for kind, _ in outcomes} == {"ok"} and ("ok", False) in outcomes
    assert read_all(storage, KEY) == data


# --- s3:// specifics ----------------------------------------------------------


@pytest.mark.parametrize("same", [True, False], ids=["same", "different"])
def test_existing_object_without_stored_checksum_is_compared_by_content(
    request: pytest.FixtureRequest, tmp_path: Path, same: bool
) -> None:
    server: MotoServer = request.getfixturevalue("moto_server")
    url: str = request.getfixturevalue("s3_bucket_url")
    storage = open_storage(url, s3_endpoint_url=server.endpoint_url)
    assert isinstance(storage, S3Storage)
    theirs = os.urandom(MIB)
    client = s3_client(server.endpoint_url)
    client.put_object(Bucket=storage.bucket, Key=f"{storage.prefix}/{KEY}", Body=theirs)
    client.close()
    ours = theirs if same else os.urandom(MIB)
    path = write(tmp_path / "seg", ours)
    if same:
        assert storage.upload_file(KEY, path, MIB).already_present
    else:
        with pytest.raises(ChecksumMismatch, match=sha(theirs)):
            storage.upload_file(KEY, path, MIB)
    assert read_all(storage, KEY) == theirs


def test_missing_bucket_is_bucket_missing(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server: MotoServer = request.getfixturevalue("moto_server")
    storage = S3Storage("walbackup-no-such-bucket", "p", endpoint_url=server.endpoint_url)
    path = write(tmp_path / "seg", b"x" * 100)
    calls: list[Callable[[], object]] = [
        lambda: storage.upload_file(KEY, path, 100),
        lambda: storage.open_read(KEY),
        lambda: list(storage.list("")),
        lambda: storage.delete_prefix(""),
        lambda: storage.delete(KEY),
        storage.probe,
    ]
    for call in calls:
        with pytest.raises(BucketMissing) as caught:
            call()
        assert "'walbackup-no-such-bucket'" in str(caught.value)
        assert server.endpoint_url in str(caught.value)


@pytest.mark.timeout(30)
def test_unreachable_endpoint_is_storage_unavailable(tmp_path: Path) -> None:
    storage = S3Storage(
        "walbackup-test",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        max_attempts=2,
        connect_timeout_s=1,
        read_timeout_s=1,
    )
    with pytest.raises(StorageUnavailable, match=re.escape("cannot reach http://127.0.0.1:")):
        storage.upload_file(KEY, write(tmp_path / "seg", b"x" * 100), 100)
    with pytest.raises(StorageUnavailable):
        storage.open_read(KEY)
    with pytest.raises(StorageUnavailable, match="probe"):
        storage.probe()


@pytest.mark.timeout(60)
def test_upload_works_again_once_the_server_is_back(tmp_path: Path) -> None:
    # A private server: restarting the session's would wipe other tests' buckets.
    server = MotoServer(free_port(), tmp_path / "moto.log")
    server.start()
    try:
        storage = S3Storage("walbackup-restart", endpoint_url=server.endpoint_url, max_attempts=1)
        path = write(tmp_path / "seg", b"x" * 100)
        server.stop()
        with pytest.raises(StorageUnavailable):
            storage.upload_file(KEY, path, 100)
        server.start()
        make_bucket(server.endpoint_url, "walbackup-restart")
        assert storage.upload_file(KEY, path, 100).already_present is False
        assert read_all(storage, KEY) == b"x" * 100
    finally:
        server.stop()


# --- storage URLs -----------------------------------------------------------

BAD_URLS = [
    "file://relative",
    "file:relative",
    "relative/path",
    "/absolute/but/no/scheme",
    "ftp://x",
    "http://example.com/bucket",
    "s3://",
    "s3:///prefix",
    "s3://Bad_Bucket/x",
    "s3://ab/x",
    "s3://bucket/a//b",
    "s3://bucket/../x",
    "file:///tmp/x?y=1",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_are_refused(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput) as caught:
        open_storage(url)
    assert repr(url) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url", ["s3://AKIAEXAMPLE:s3cr3t@bucket/p", "ftp://user:s3cr3t@host/", "file://u:s3cr3t@h/x"]
)
def test_credentials_in_urls_are_never_echoed(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_storage(url)
    assert "s3cr3t" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


def test_urls_pick_their_backend(tmp_path: Path) -> None:
    local = open_storage((tmp_path / "with space").as_uri())
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "with space"
    assert local.root.is_dir()
    s3 = open_storage("s3://bucket.name/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == (
        "bucket.name",
        "some/prefix",
        "s3://bucket.name/some/prefix",
    )
