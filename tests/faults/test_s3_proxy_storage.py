"""S3Storage against a real moto server behind our fault-injection proxy
(``tests/faults/s3proxy.py``, its own process): every fault ends in the
right error, nothing corrupt is ever reported stored, and uploads succeed
once the fault clears. What moto holds is checked with a plain boto3 client
straight at moto, not through the proxy."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.errors import ChecksumMismatch, SegmentFileError, StorageUnavailable, UploadCorrupted
from tasks.storage import digest_segment_file, open_storage, segment_key
from tasks.storage.s3 import S3Storage
from tasks.storage.s3_probe import PROBE_KEY, PROBE_TTL_S, RETRY_S, ChecksumProbe
from tasks.storage.s3_stored import SHA256_METADATA
from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import AWS_ENV, MotoServer
from tests.servers import env_without_walbackup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEG = 16 << 20
KEY = segment_key(TenantTimelineId("c" * 32, "1" * 32), "000000010000000000000001")
READ_TIMEOUT_S = 2.0


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def stored_checksum_of(data: bytes) -> dict[str, str]:
    """``put_object`` arguments that make moto store (and return on GET with
    ChecksumMode) this SHA-256 as the object's checksum, whatever the body."""
    return {
        "ChecksumAlgorithm": "SHA256",
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
    }


class Moto:
    """The test bucket, seen straight at moto (no proxy in between), through a
    plain client that reads what is stored without validating anything."""

    def __init__(self, server: MotoServer, storage: S3Storage) -> None:
        self.client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            config=Config(
                s3={"addressing_style": "path"}, response_checksum_validation="when_required"
            ),
        )
        self.bucket = storage.bucket
        self.prefix = storage.prefix

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise
        return response["Body"].read()

    def put(self, key: str, data: bytes, **extra: Any) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, **extra)


@pytest.fixture
def storage(proxy: S3FaultProxy, s3_bucket_url: str) -> Iterator[S3Storage]:
    """What a node worker gets: one attempt, short timeouts, via the proxy.
    Its checksum probe (a PUT and a DELETE, at the first upload) runs here,
    so that a test's fault and counters concern the test's own requests."""
    backend = open_storage(
        s3_bucket_url,
        s3_endpoint_url=proxy.endpoint_url,
        max_attempts=1,
        connect_timeout_s=2,
        read_timeout_s=READ_TIMEOUT_S,
    )
    assert isinstance(backend, S3Storage)
    assert backend.needs_md5  # moto stores bytes that fail their checksum
    proxy.reset_stats()
    yield backend
    backend.close()


@pytest.fixture
def moto(moto_server: MotoServer, storage: S3Storage) -> Iterator[Moto]:
    view = Moto(moto_server, storage)
    yield view
    view.client.close()


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(SEG)
    path = tmp_path_factory.mktemp("wal") / "000000010000000000000001"
    path.write_bytes(data)
    return path, data


def test_flipped_byte_is_upload_corrupted_and_not_kept(
    storage: S3Storage,
    proxy: S3FaultProxy,
    moto: Moto,
    segment: tuple[Path, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, data = segment
    proxy.set("flip_byte", methods=["PUT"], count=1)
    logger = "tasks.storage.s3_upload"
    with caplog.at_level(logging.ERROR, logger=logger), pytest.raises(UploadCorrupted):
        storage.upload_file(KEY, path, SEG)
    assert moto.get(KEY) is None  # the corrupt object was deleted
    md5 = hashlib.md5(data).hexdigest()
    stored_etag = hashlib.md5(flip(data)).hexdigest()
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert KEY in record.getMessage() and md5 in record.getMessage()
    assert stored_etag in record.getMessage()
    stats = proxy.stats()
    assert stats.faulted == {"PUT": 1}
    assert stats.forwarded == {"PUT": 1, "GET": 1, "DELETE": 1}  # read back, deleted

    # The fault was for one request: the next attempt goes through.
    result = storage.upload_file(KEY, path, SEG)
    assert (result.already_present, result.md5_hex) == (False, md5)
    assert moto.get(KEY) == data


def test_flipped_byte_with_the_callers_digest(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    digest = digest_segment_file(path, SEG)
    proxy.set("flip_byte", methods=["PUT"])
    for _ in range(2):
        with pytest.raises(UploadCorrupted):
            storage.upload_file(KEY, path, SEG, digest=digest)
        assert moto.get(KEY) is None
    proxy.clear()
    result = storage.upload_file(KEY, path, SEG, digest=digest)
    assert result.sha256_hex == digest.sha256_hex and not result.already_present
    assert moto.get(KEY) == data


def test_kms_bucket_uploads_are_verified_by_reading_back(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    """With SSE-KMS the ETag is no MD5: the stored bytes are read back."""
    moto.client.put_bucket_encryption(
        Bucket=moto.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
        },
    )
    path, data = segment
    proxy.set("flip_byte", methods=["PUT"], count=1)
    with pytest.raises(UploadCorrupted):
        storage.upload_file(KEY, path, SEG)
    assert moto.get(KEY) is None
    proxy.reset_stats()
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert proxy.stats().seen == {"PUT": 1, "GET": 1}
    assert storage.upload_file(KEY, path, SEG).already_present is True
    assert moto.get(KEY) == data


def test_reply_lost_after_the_write_resolves_to_already_present(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    proxy.set("error500_after_forward", methods=["PUT"], count=1)
    with pytest.raises(StorageUnavailable, match="InternalError"):
        storage.upload_file(KEY, path, SEG)
    assert moto.get(KEY) == data  # stored all the same
    result = storage.upload_file(KEY, path, SEG)  # 412, compared by its MD5 ETag
    assert result.already_present and result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert proxy.stats().seen == {"PUT": 2, "HEAD": 1}


def test_corrupt_copy_of_our_segment_is_replaced(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    """A corrupted write whose reply was lost: the stored object says it is
    our segment (metadata) but holds other bytes. Not a split brain."""
    path, data = segment
    meant = {SHA256_METADATA: hashlib.sha256(data).hexdigest()}
    moto.put(KEY, flip(data), Metadata=meant, **stored_checksum_of(data))
    with pytest.raises(UploadCorrupted, match="earlier upload"):
        storage.upload_file(KEY, path, SEG)
    assert moto.get(KEY) is None
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert moto.get(KEY) == data


@pytest.mark.parametrize("echoed", [False, True], ids=["plain", "echoing-our-sha256"])
def test_existing_different_bytes_are_a_checksum_mismatch(
    storage: S3Storage, moto: Moto, segment: tuple[Path, bytes], echoed: bool
) -> None:
    """Another writer's bytes stay, and the error is loud. ``echoing``: the
    object carries OUR SHA-256 as its stored checksum (moto keeps whatever
    it is sent): only the bytes count."""
    path, data = segment
    theirs = flip(data)
    extra = stored_checksum_of(data) if echoed else {}
    moto.put(KEY, theirs, **extra)
    with pytest.raises(ChecksumMismatch, match=hashlib.sha256(theirs).hexdigest()):
        storage.upload_file(KEY, path, SEG)
    assert moto.get(KEY) == theirs


def test_existing_same_bytes_are_already_present(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    moto.put(KEY, data)
    assert storage.upload_file(KEY, path, SEG).already_present
    assert moto.get(KEY) == data
    assert proxy.stats().seen == {"PUT": 1, "HEAD": 1}  # the MD5 ETag sufficed, no GET


@pytest.mark.parametrize(
    ("mode", "code"), [("error500", "InternalError"), ("slowdown503", "SlowDown")]
)
@pytest.mark.parametrize("attempts", [1, 3])
def test_server_errors_reach_the_caller_after_max_attempts(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    moto: Moto,
    segment: tuple[Path, bytes],
    mode: str,
    code: str,
    attempts: int,
) -> None:
    storage = open_storage(s3_bucket_url, s3_endpoint_url=proxy.endpoint_url, max_attempts=attempts)
    path, data = segment
    assert storage.needs_md5  # the checksum probe, before the fault
    proxy.reset_stats()
    proxy.set(mode)
    with pytest.raises(StorageUnavailable, match=code):
        storage.upload_file(KEY, path, SEG)
    with pytest.raises(StorageUnavailable, match=code):
        storage.open_read(KEY)
    stats = proxy.stats()
    assert stats.seen == {"PUT": attempts, "GET": attempts}
    assert stats.forwarded == {}
    assert moto.get(KEY) is None
    proxy.clear()
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert moto.get(KEY) == data
    storage.close()


def test_reset_mid_body_is_storage_unavailable(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    proxy.set("reset_mid_body", methods=["PUT"], count=1)
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        storage.upload_file(KEY, path, SEG)
    assert proxy.stats().seen == {"PUT": 1} and proxy.stats().forwarded == {}
    assert moto.get(KEY) is None
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert moto.get(KEY) == data


def test_reset_of_a_read_is_storage_unavailable(
    storage: S3Storage, proxy: S3FaultProxy, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    storage.upload_file(KEY, path, SEG)
    proxy.set("reset_mid_body", methods=["GET"], count=1)
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        storage.open_read(KEY)
    with storage.open_read(KEY) as stream:
        assert stream.read() == data


def test_blackhole_fails_fast_and_heals(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    proxy.set("blackhole")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="ReadTimeoutError"):
        storage.upload_file(KEY, path, SEG)
    # boto3 waits 1 s for "100 Continue", sends the body, then read_timeout.
    assert time.monotonic() - started < READ_TIMEOUT_S + 3
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        storage.probe()
    probe_s = time.monotonic() - started
    assert probe_s < 2.5, probe_s  # one attempt, 1 s timeouts: ~1.0 s measured
    assert proxy.stats().held == 2

    proxy.clear()  # the partition heals: the held PUT may still land, late
    storage.probe()
    result = storage.upload_file(KEY, path, SEG)
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert moto.get(KEY) == data


def test_latency_only_slows_down(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    proxy.set("latency", ms=500)
    started = time.monotonic()
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert time.monotonic() - started >= 0.5
    assert moto.get(KEY) == data


def test_probe(storage: S3Storage, proxy: S3FaultProxy) -> None:
    storage.probe()
    assert proxy.stats().seen == {"GET": 1}
    proxy.set("error500")
    with pytest.raises(StorageUnavailable, match="probe"):
        storage.probe()
    assert proxy.stats().seen == {"GET": 2}  # one attempt, whatever max_attempts


def test_fetch_of_an_object_corrupted_in_storage_exits_5(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    storage: S3Storage,
    moto: Moto,
    tmp_path: Path,
) -> None:
    """The object's bytes change behind our back while it keeps its original
    stored SHA-256 (moto stores whatever checksum it is sent)."""
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    name = xlog_file_name(1, SEG)
    data = os.urandom(SEG)
    src = tmp_path / name
    src.write_bytes(data)
    key = segment_key(ttid, name)
    storage.upload_file(key, src, SEG)
    moto.put(key, flip(data), **stored_checksum_of(data))

    corrupt = "checksum mismatch: the stored object is corrupt"
    with pytest.raises(ChecksumMismatch, match=corrupt), storage.open_read(key) as stream:
        stream.read()

    env = env_without_walbackup() | {
        "WALBACKUP_REMOTE_STORAGE": s3_bucket_url,
        "WALBACKUP_S3_ENDPOINT_URL": proxy.endpoint_url,
        "WALBACKUP_DATA_DIR": str(tmp_path / "data"),
    }
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "fetch", str(ttid), name, str(pg_wal / "RECOVERYXLOG")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 202, run.stderr
    stderr = run.stderr.decode()
    assert stderr.startswith("walbackup: checksum mismatch: ") and stderr.count("\n") == 1
    assert key in stderr
    assert list(pg_wal.iterdir()) == []  # nothing half-written left


# --- a server that verifies checksums (the proxy in front of moto plays AWS S3) ---


@pytest.fixture(scope="module")
def verifying_process(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3FaultProxy]:
    log_path = tmp_path_factory.mktemp("s3proxy-verifying") / "s3proxy.log"
    with S3FaultProxy(moto_server.endpoint_url, log_path=log_path, verify_checksums=True) as proxy:
        yield proxy


@pytest.fixture
def verifying(verifying_process: S3FaultProxy) -> Iterator[S3FaultProxy]:
    verifying_process.clear()
    verifying_process.reset_stats()
    yield verifying_process
    verifying_process.clear()


def worker_storage(url: str, endpoint_url: str, **extra: Any) -> S3Storage:
    backend = open_storage(
        url, s3_endpoint_url=endpoint_url, max_attempts=1, read_timeout_s=READ_TIMEOUT_S, **extra
    )
    assert isinstance(backend, S3Storage)
    return backend


def test_a_verifying_server_is_trusted_and_no_md5_is_computed(
    verifying: S3FaultProxy, s3_bucket_url: str, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    storage = worker_storage(s3_bucket_url, verifying.endpoint_url)
    assert not storage.needs_md5  # the probe was refused with BadDigest
    assert verifying.stats().refused == {"PUT": 1}
    verifying.reset_stats()

    digest = digest_segment_file(path, SEG, md5=storage.needs_md5)
    assert digest.md5 == b""
    result = storage.upload_file(KEY, path, SEG, digest=digest)
    stats = verifying.stats()
    assert stats.seen == {"PUT": 1} and stats.with_md5 == {}  # no MD5, no read-back
    # The ledger still gets the MD5: the ETag of bytes the server verified.
    assert result.md5_hex == hashlib.md5(data).hexdigest() and not result.already_present
    assert moto.get(KEY) == data

    # The key exists: the stored SHA-256 (the server verified it) decides, no GET.
    again = storage.upload_file(KEY, path, SEG, digest=digest)
    assert again.already_present and again.md5_hex == result.md5_hex
    assert verifying.stats().seen == {"PUT": 2, "HEAD": 1}
    # Small objects (ledger pages) pass the server's checks as they are.
    assert storage.create_bytes("ledger/page", b"ledger bytes")
    assert verifying.stats().refused == {} and moto.get("ledger/page") == b"ledger bytes"
    storage.close()


def test_a_verifying_server_refuses_a_flipped_byte_and_nothing_is_stored(
    verifying: S3FaultProxy, s3_bucket_url: str, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    storage = worker_storage(s3_bucket_url, verifying.endpoint_url)
    assert not storage.needs_md5
    verifying.reset_stats()
    verifying.set("flip_byte", methods=["PUT"], count=1)
    with pytest.raises(UploadCorrupted, match="BadDigest"):
        storage.upload_file(KEY, path, SEG)  # no digest given: hashed without MD5
    stats = verifying.stats()
    assert stats.refused == {"PUT": 1} and stats.forwarded == {}
    assert moto.get(KEY) is None
    assert storage.upload_file(KEY, path, SEG).already_present is False
    assert moto.get(KEY) == data
    storage.close()


def test_a_changed_file_is_told_from_a_corrupted_transfer(
    verifying: S3FaultProxy, s3_bucket_url: str, moto: Moto, tmp_path: Path
) -> None:
    """The file changed after it was hashed: the server refuses what we send,
    and the error names the file, not the network."""
    data = os.urandom(SEG)
    path = tmp_path / "000000010000000000000001"
    path.write_bytes(data)
    storage = worker_storage(s3_bucket_url, verifying.endpoint_url)
    digest = digest_segment_file(path, SEG, md5=storage.needs_md5)
    assert digest.md5 == b""  # the server's check alone catches it
    path.write_bytes(flip(data))
    with pytest.raises(SegmentFileError, match="changed between being hashed and being stored"):
        storage.upload_file(KEY, path, SEG, digest=digest)
    assert moto.get(KEY) is None
    storage.close()


def test_upload_check_etag_never_trusts_the_server(
    verifying: S3FaultProxy, s3_bucket_url: str, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    path, data = segment
    storage = worker_storage(s3_bucket_url, verifying.endpoint_url, upload_check="etag")
    assert storage.needs_md5
    assert storage.upload_file(KEY, path, SEG).md5_hex == hashlib.md5(data).hexdigest()
    stats = verifying.stats()
    assert stats.seen == {"PUT": 1} and stats.with_md5 == {"PUT": 1}  # no probe
    storage.close()


def test_a_digest_without_md5_is_hashed_again_for_a_server_that_does_not_verify(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, segment: tuple[Path, bytes]
) -> None:
    """The digest was taken while the server verified; now it does not (the
    probe's answer changed): the upload hashes the MD5 it needs."""
    path, data = segment
    digest = digest_segment_file(path, SEG, md5=False)
    proxy.set("flip_byte", methods=["PUT"], count=1)
    with pytest.raises(UploadCorrupted):
        storage.upload_file(KEY, path, SEG, digest=digest)  # caught by the MD5 ETag
    assert moto.get(KEY) is None
    result = storage.upload_file(KEY, path, SEG, digest=digest)
    assert result.md5_hex == hashlib.md5(data).hexdigest()
    assert proxy.stats().with_md5 == {"PUT": 2}
    assert moto.get(KEY) == data


def test_a_digest_without_md5_and_a_file_changed_since_are_never_uploaded(
    storage: S3Storage, proxy: S3FaultProxy, moto: Moto, tmp_path: Path
) -> None:
    """Hashing again for the MD5 finds the file changed since its digest."""
    data = os.urandom(SEG)
    path = tmp_path / "000000010000000000000001"
    path.write_bytes(data)
    digest = digest_segment_file(path, SEG, md5=False)
    path.write_bytes(flip(data))
    with pytest.raises(SegmentFileError, match="changed between being hashed and being stored"):
        storage.upload_file(KEY, path, SEG, digest=digest)
    assert proxy.stats().seen == {} and moto.get(KEY) is None


def test_the_checksum_probe_is_asked_again(
    proxy: S3FaultProxy, verifying: S3FaultProxy, moto: Moto, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe that fails tells nothing (the MD5 stays) and is retried after
    RETRY_S; an answer holds for PROBE_TTL_S, then the server is asked again
    (here the endpoint is swapped for one that does not verify)."""
    config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1})
    clients = {
        p.endpoint_url: boto3.client(
            "s3",
            endpoint_url=p.endpoint_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            config=config,
        )
        for p in (proxy, verifying)
    }
    endpoint = [proxy.endpoint_url]
    now = [0.0]
    probe = ChecksumProbe(
        lambda: clients[endpoint[0]], moto.bucket, f"{moto.prefix}/", {}, "test-s3",
        clock=lambda: now[0],
    )  # fmt: skip
    proxy.set("error500", methods=["PUT"])
    with caplog.at_level(logging.WARNING, logger="tasks.storage.s3_probe"):
        assert not probe.verifies()
        now[0] += RETRY_S + 1
        assert not probe.verifies()  # failing again: the next try waits twice as long
    assert caplog.text.count("checksum probe failed (InternalError)") == 1  # once a streak
    assert proxy.stats().seen == {"PUT": 2}
    proxy.clear()
    endpoint[0] = verifying.endpoint_url
    now[0] += 2 * RETRY_S - 1
    assert not probe.verifies()  # not asked again yet
    assert verifying.stats().seen == {}
    now[0] += 2
    assert probe.verifies()
    endpoint[0] = proxy.endpoint_url
    now[0] += PROBE_TTL_S - 1
    assert probe.verifies()
    now[0] += 2
    with caplog.at_level(logging.WARNING, logger="tasks.storage.s3_probe"):
        assert not probe.verifies()
    assert "every upload is verified by its MD5 ETag" in caplog.text
    assert proxy.stats().seen == {"PUT": 3, "DELETE": 1}  # the stored probe, deleted
    listed = moto.client.list_objects_v2(Bucket=moto.bucket, Prefix=f"{moto.prefix}/")
    assert not [o["Key"] for o in listed.get("Contents", []) if PROBE_KEY in o["Key"]]
    for client in clients.values():
        client.close()


def test_uploads_wait_for_the_first_checksum_probe(
    verifying: S3FaultProxy, s3_bucket_url: str
) -> None:
    """The first uploads, started together, all get the first probe's answer
    (and none hashes an MD5 for nothing): one probe, whoever runs it."""
    storage = worker_storage(s3_bucket_url, verifying.endpoint_url)
    verifying.set("latency", ms=500)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: storage.needs_md5, range(4)))
    assert answers == [False] * 4
    assert verifying.stats().seen == {"PUT": 1}
    storage.close()
