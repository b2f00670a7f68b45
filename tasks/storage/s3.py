"""``s3://BUCKET/PREFIX`` through boto3, on AWS or any S3-compatible endpoint.

The only module that knows botocore's errors: every call runs under
``_errors``, which maps them onto ``tasks.errors``.

Uploads are single-part ``PutObject`` calls, conditional (``If-None-Match:
*``), carrying ``Content-MD5`` and ``x-amz-checksum-sha256`` of the bytes we
hashed (servers that verify refuse corrupted bytes with ``BadDigest``) and
that SHA-256 as metadata (``x-amz-meta-walbackup-sha256``). What was stored is
then verified without trusting any echo of our checksums (a server that does
not verify, like moto, stores anything and echoes our SHA-256 back):

- after a 2xx, the response ETag must be the MD5 of our bytes (a single-part
  ETag is the MD5 of the bytes the server received); when it is not, or not
  MD5-shaped (SSE-KMS, SSE-C, ``…-N``), the object is read back and hashed;
- on a mismatch the object is ours (If-None-Match succeeded): it is deleted
  (``If-Match`` its ETag) and ``UploadCorrupted`` raised, so the caller retries;
- on 412/409 the existing object is compared by its MD5 ETag, or by reading
  it back and hashing it: same bytes is ``already_present``, a corrupt copy
  of our own segment (its metadata names our SHA-256) is deleted as above,
  different bytes are a ``ChecksumMismatch``.

Whole-object reads ask for the stored checksum (``ChecksumMode=ENABLED``): a
body that does not match it raises ``ChecksumMismatch`` (the stored object is
corrupt) at its end.

Failures surface quickly: botocore makes at most ``max_attempts`` attempts per
request (a node worker passes 1 and retries with its own backoff) and waits
``connect_timeout_s``/``read_timeout_s``; ``probe`` uses a separate client
with one attempt and ``probe_timeout_s``.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from tasks.errors import (
    AccessDenied,
    BucketMissing,
    ChecksumMismatch,
    InvalidInput,
    NotFound,
    Permanent,
    SegmentFileError,
    StorageUnavailable,
    UploadCorrupted,
    WalBackupError,
)
from tasks.storage import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_READ_TIMEOUT_S
from tasks.storage.base import (
    Hasher,
    ObjectInfo,
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    changed_since_hashed,
    check_digest_size,
    check_read_size,
    checksum_mismatch,
    digest_segment_file,
    digest_stream,
    open_segment_file,
    read_chunks,
    redact_url,
    validate_key,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DELETE_BATCH = 1000  # the most one DeleteObjects call takes

DEFAULT_PROBE_TIMEOUT_S = 1.0

SHA256_METADATA = "walbackup-sha256"
"""User metadata (``x-amz-meta-walbackup-sha256``) naming the SHA-256 the writer
meant to store: tells a corrupt copy of our own segment from someone else's."""

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled"}
)  # fmt: skip
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
     "ServiceUnavailable", "IncompleteBody"}
)  # fmt: skip
# The server computed another checksum over the bytes it received than we sent.
_CORRUPT_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
# A server that does not take If-Match on DELETE.
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
_KMS_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
# The key exists (412), or another conditional write to it is in flight (409).
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_UNREACHABLE = (BotoConnectionError, HTTPClientError, IncompleteReadError)
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def validate_bucket_name(bucket: str) -> str:
    """S3's bucket naming rules (the ones that matter for a URL)."""
    if _BUCKET_NAME.fullmatch(bucket) is None or ".." in bucket or _IPV4.fullmatch(bucket):
        raise InvalidInput(
            f"invalid S3 bucket name {bucket!r}: 3 to 63 lower-case letters, digits, '.' "
            "or '-', starting and ending with a letter or digit"
        )
    return bucket


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _md5_etag(response: Mapping[str, Any]) -> str | None:
    """The MD5 of the object's bytes, lower-case hex, when the ETag of a PUT,
    HEAD or GET response is one: a single-part object's ETag is, unless it is
    encrypted with SSE-KMS or SSE-C (multipart ETags end in ``-N``)."""
    if response.get("ServerSideEncryption") in _KMS_ENCRYPTION or response.get(
        "SSECustomerAlgorithm"
    ):
        return None
    match = _MD5_ETAG.fullmatch(str(response.get("ETag", "")))
    return match.group(1).lower() if match else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class S3Storage(RemoteStorage):
    """S3 storage. ``max_attempts`` is botocore's total attempts per request
    (1: every failure reaches the caller at once, who retries with its own
    backoff); ``connect_timeout_s``/``read_timeout_s`` bound how long one
    attempt waits to connect and, once connected, for each read of the
    answer; ``probe_timeout_s`` is both timeouts of ``probe`` (one attempt).
    ``parallel_jobs`` sizes the connection pool."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        parallel_jobs: int = 5,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be >= 1, got {max_attempts}")
        self.bucket = validate_bucket_name(bucket)
        self.prefix = validate_key(prefix) if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        self._endpoint_url = endpoint_url
        self._where = redact_url(endpoint_url) if endpoint_url else "AWS S3"
        common: dict[str, Any] = {
            # Checksums of responses are validated where we ask for them
            # (ChecksumMode on reads), not on the read-backs we hash ourselves.
            "response_checksum_validation": "when_required",
        }
        if endpoint_url:
            common["s3"] = {"addressing_style": "path"}
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max(10, parallel_jobs * 2),
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            **common,
        )
        self._probe_config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=4,
            connect_timeout=probe_timeout_s,
            read_timeout=probe_timeout_s,
            **common,
        )
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[S3Client, int]] = {}
        self._warned_etag = False

    def _client(self) -> S3Client:
        """One client per process, made on first use (clients are thread-safe;
        sessions are not, and neither survives a fork)."""
        return self._cached_client("main", self._config)

    def _probe_client(self) -> S3Client:
        return self._cached_client("probe", self._probe_config)

    def _cached_client(self, name: str, config: Config) -> S3Client:
        pid = os.getpid()
        with self._lock:
            cached = self._clients.get(name)
            if cached is None or cached[1] != pid:
                session = boto3.session.Session()
                client = session.client(
                    "s3",
                    region_name=session.region_name or DEFAULT_REGION,
                    endpoint_url=self._endpoint_url,
                    config=config,
                )
                cached = self._clients[name] = (client, pid)
            return cached[0]

    def _full_key(self, key: str) -> str:
        return self._root + validate_key(key)

    def _classify(self, code: str, status: int, action: str, message: str) -> WalBackupError:
        where = f"{self.url} at {self._where}: {action}"
        if code == "NoSuchBucket":
            return BucketMissing(f"bucket {self.bucket!r} does not exist at {self._where}")
        if code in _ACCESS_CODES or status == 403:
            return AccessDenied(
                f"{where}: access denied ({code or status}); check the credentials boto3 "
                "found and the bucket's policy"
            )
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(f"{where}: no such object")
        if code in _CORRUPT_CODES:
            return UploadCorrupted(
                f"{where}: {code}: the server received other bytes than we sent "
                f"(corrupted in transit) {message}".rstrip()
            )
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"{where}: {code or status} {message}".rstrip())
        return Permanent(f"{where}: {code or status} {message}".rstrip())

    def _translate(self, exc: BotoCoreError | ClientError, action: str) -> WalBackupError:
        if isinstance(exc, ClientError):
            message = exc.response.get("Error", {}).get("Message", "")
            return self._classify(_error_code(exc), _status(exc), action, message)
        if isinstance(exc, FlexibleChecksumError):
            return ChecksumMismatch(
                f"{self.url}: {action}: checksum mismatch: the stored object is corrupt (the "
                f"bytes {self._where} returned do not match the checksum stored with them)"
            )
        if isinstance(exc, _UNREACHABLE):
            return StorageUnavailable(
                f"{self.url}: {action}: cannot reach {self._where} ({type(exc).__name__})"
            )
        if isinstance(exc, _NO_CREDENTIALS):
            return AccessDenied(
                f"{self.url}: {action}: no usable AWS credentials in boto3's standard chain "
                "(environment, ~/.aws, instance role)"
            )
        return Permanent(f"{self.url}: {action}: {type(exc).__name__}: {exc}")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, action) from exc

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        full_key = self._full_key(key)
        if digest is not None:
            check_digest_size(path, digest, expected_size)
        with open_segment_file(path, expected_size) as src:
            if digest is None:
                digest = digest_stream(src)
                check_read_size(path, digest.size, expected_size)
                src.seek(0)
            with self._errors(f"upload {key}"):
                client = self._client()
                try:
                    response = client.put_object(
                        Bucket=self.bucket,
                        Key=full_key,
                        Body=src,
                        ContentLength=expected_size,
                        ContentMD5=_b64(digest.md5),
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=_b64(digest.sha256),
                        Metadata={SHA256_METADATA: digest.sha256_hex},
                        IfNoneMatch="*",
                    )
                except ClientError as exc:
                    code = _error_code(exc)
                    if code in _CORRUPT_CODES:
                        raise self._corrupted(
                            key, path, digest, f"{self._where} refused the bytes it got ({code})"
                        ) from exc
                    if code not in _EXISTS_CODES:
                        raise
                    self._check_existing(
                        client, key, path, digest, in_flight=code != "PreconditionFailed"
                    )
                    return UploadResult(
                        key, expected_size, digest.sha256_hex, digest.md5_hex, already_present=True
                    )
                self._verify_created(client, key, path, digest, response)
        return UploadResult(
            key, expected_size, digest.sha256_hex, digest.md5_hex, already_present=False
        )

    def _verify_created(
        self,
        client: S3Client,
        key: str,
        path: Path,
        digest: SegmentDigest,
        response: Mapping[str, Any],
    ) -> None:
        """Our conditional PUT created the object: it must hold our bytes. Its
        ETag equal to our MD5 proves it; otherwise (no MD5-shaped ETag, or
        another one) the object is read back and hashed, so that an endpoint
        whose ETags are not MD5s costs a GET instead of failing every upload.
        If the bytes differ, delete the object and raise."""
        etag = _md5_etag(response)
        if etag == digest.md5_hex:
            return
        read_back, _ = self._read_back(client, key, "was gone when read back after its upload")
        if read_back == digest:
            if etag is not None and not self._warned_etag:
                self._warned_etag = True
                log.warning(
                    "%s: %s returns ETags that are not the MD5 of the bytes; uploads are "
                    "verified by reading them back",
                    self.url,
                    self._where,
                )
            return
        stored = (
            f"etag {response.get('ETag', '?')}, sha256 {read_back.sha256_hex} "
            f"({read_back.size} bytes)"
        )
        self._delete_corrupt(client, key, response.get("ETag"))
        raise self._corrupted(key, path, digest, f"{self._where} stored {stored}")

    def _check_existing(
        self, client: S3Client, key: str, path: Path, digest: SegmentDigest, in_flight: bool
    ) -> None:
        """The key exists (or is being written): same bytes is success, a
        corrupt copy of our own segment is deleted (``UploadCorrupted``),
        different bytes are a ``ChecksumMismatch``. Never decided by a
        checksum the server merely echoes."""
        full_key = self._full_key(key)
        try:
            head = client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            if in_flight and _status(exc) == 404:
                raise StorageUnavailable(
                    f"{self.url}: another upload of {key} is in flight; try again"
                ) from exc
            raise
        if head.get("ContentLength") == digest.size and _md5_etag(head) == digest.md5_hex:
            return
        stored, response = self._read_back(client, key, "was deleted while we compared it")
        if stored == digest:
            return
        meant = response.get("Metadata", {}).get(SHA256_METADATA)
        if meant == digest.sha256_hex:
            # Someone (we, most likely, with the reply lost) wrote our segment
            # and the server stored other bytes: not a split brain, a corrupt copy.
            self._delete_corrupt(client, key, response.get("ETag"))
            raise self._corrupted(
                key,
                path,
                digest,
                f"an earlier upload of it left sha256 {stored.sha256_hex} stored",
            )
        note = ""
        if meant is not None and meant != stored.sha256_hex:
            note = f" The stored object is corrupt too: its writer meant sha256 {meant}."
        raise checksum_mismatch(self.url, key, digest.sha256_hex, stored.sha256_hex, note)

    def _read_back(
        self, client: S3Client, key: str, gone: str
    ) -> tuple[SegmentDigest, Mapping[str, Any]]:
        """Hash the object as stored (no checksum the server sends is trusted).
        An object that vanished meanwhile is retryable: ``gone`` says when."""
        full_key = self._full_key(key)
        try:
            with self._errors(f"read back {key}"):
                response = client.get_object(Bucket=self.bucket, Key=full_key)
                hasher = Hasher()
                with response["Body"] as body:
                    for chunk in read_chunks(body):
                        hasher.update(chunk)
        except NotFound as exc:
            raise StorageUnavailable(f"{self.url}: {key} {gone}; try again") from exc
        return hasher.digest(), cast(Mapping[str, Any], response)

    def _delete_corrupt(self, client: S3Client, key: str, etag: str | None) -> None:
        """Delete the corrupt object we found under ``key``, only if it is still
        that object (``If-Match`` its ETag). Failing is logged, not raised: the
        next upload attempt finds the corrupt copy again and retries this."""
        full_key = self._full_key(key)
        try:
            try:
                if etag:
                    client.delete_object(Bucket=self.bucket, Key=full_key, IfMatch=etag)
                else:
                    client.delete_object(Bucket=self.bucket, Key=full_key)
            except ClientError as exc:
                if _error_code(exc) in _UNSUPPORTED_CODES or _status(exc) == 501:
                    # No conditional delete here: after our If-None-Match
                    # create nobody else can have replaced the object.
                    client.delete_object(Bucket=self.bucket, Key=full_key)
                elif _status(exc) in (404, 412):
                    log.warning(
                        "%s: corrupt object %s was deleted or replaced meanwhile; left alone",
                        self.url,
                        key,
                    )
                else:
                    raise
        except (BotoCoreError, ClientError) as exc:
            log.error(
                "%s: could not delete corrupt object %s (%s); the next upload attempt retries",
                self.url,
                key,
                self._translate(exc, f"delete {key}"),
            )

    def _corrupted(
        self, key: str, path: Path, digest: SegmentDigest, stored: str
    ) -> WalBackupError:
        """The error for an upload whose bytes arrived corrupted (``stored``
        says what the server has): if the local file no longer matches
        ``digest`` it changed under us (``SegmentFileError``), else the bytes
        were corrupted on the way (``UploadCorrupted``, retryable). Logged at
        ERROR either way."""
        what = (
            f"{self.url}: upload of {key} arrived corrupted: we sent md5 {digest.md5_hex} "
            f"(sha256 {digest.sha256_hex}), {stored}"
        )
        try:
            now = digest_segment_file(path, digest.size)
        except SegmentFileError as exc:
            error: WalBackupError = exc
        else:
            if now != digest:
                error = changed_since_hashed(path, digest, now)
            else:
                error = UploadCorrupted(f"{what}; the object is not kept: send it again")
        if isinstance(error, UploadCorrupted):
            log.error("%s", error)
        else:
            log.error("%s; %s", what, error)
        return error

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        full_key = self._full_key(key)
        if offset < 0:
            raise InvalidInput(f"invalid read offset {offset} for {key}: negative")
        action = f"read {key}"
        with self._errors(action):
            client = self._client()
            try:
                if offset:
                    # A full-object checksum says nothing about a range.
                    response = client.get_object(
                        Bucket=self.bucket, Key=full_key, Range=f"bytes={offset}-"
                    )
                else:
                    response = client.get_object(
                        Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED"
                    )
            except ClientError as exc:
                if _error_code(exc) != "InvalidRange":
                    raise
                # S3 refuses an empty range: reading from the very end is fine.
                size = client.head_object(Bucket=self.bucket, Key=full_key)["ContentLength"]
                if offset != size:
                    raise InvalidInput(
                        f"invalid read offset {offset} for {key}: the object has {size} bytes"
                    ) from exc
                return io.BytesIO()
        return cast(BinaryIO, _ObjectStream(response["Body"], self, action))

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        validate_key(prefix, prefix=True)
        return self._list(prefix, start_after)

    def _list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        with self._errors(f"list {prefix!r}"):
            paginator = self._client().get_paginator("list_objects_v2")
            # Every key below the root sorts after the root itself.
            pages = paginator.paginate(
                Bucket=self.bucket, Prefix=self._root + prefix, StartAfter=self._root + start_after
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "").strip('"') or None
                    yield ObjectInfo(obj["Key"][len(self._root) :], obj["Size"], etag)

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        with self._errors(f"delete {key}"):
            self._client().delete_object(Bucket=self.bucket, Key=full_key)

    def probe(self) -> None:
        """One ``ListObjectsV2`` (one key at most) through a client with a
        single attempt and ``probe_timeout_s`` timeouts."""
        with self._errors("probe"):
            self._probe_client().list_objects_v2(Bucket=self.bucket, Prefix=self._root, MaxKeys=1)

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        deleted = 0
        action = f"delete {prefix!r}"
        with self._errors(action):
            client = self._client()
            while True:
                batch: list[ObjectIdentifierTypeDef] = [
                    {"Key": self._root + info.key}
                    for info in itertools.islice(objects, DELETE_BATCH)
                ]
                if not batch:
                    return deleted
                response = client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if failed := response.get("Errors"):
                    first = failed[0]
                    raise self._classify(
                        first.get("Code", ""),
                        0,
                        f"{action}: {len(failed)} objects not deleted, e.g. {first.get('Key')}",
                        first.get("Message", ""),
                    )
                deleted += len(batch)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client, pid in clients.values():
            if pid == os.getpid():
                client.close()


class _ObjectStream(io.BufferedIOBase):
    """A GET response body whose read errors arrive as walbackup errors."""

    def __init__(self, body: StreamingBody, storage: S3Storage, action: str) -> None:
        super().__init__()
        self._body = body
        self._storage = storage
        self._action = action

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with self._storage._errors(self._action):
            return self._body.read(None if size is None or size < 0 else size)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
