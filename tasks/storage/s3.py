"""``s3://BUCKET/PREFIX`` through boto3, on AWS or any S3-compatible endpoint.

The only module that knows botocore's errors: every call runs under
``_errors``, which maps them onto ``tasks.errors``. Uploads are conditional
(``If-None-Match: *``) and carry a SHA-256 checksum; the server's answer is
checked here, since not every S3-compatible server verifies it.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterator
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
    StorageUnavailable,
    WalBackupError,
)
from tasks.storage.base import (
    ObjectInfo,
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    check_read_size,
    checksum_mismatch,
    open_segment_file,
    redact_url,
    sha256_stream,
    validate_key,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef, ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DELETE_BATCH = 1000  # the most one DeleteObjects call takes

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled"}
)  # fmt: skip
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
     "ServiceUnavailable", "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}
)  # fmt: skip
# The key exists (412), or another conditional write to it is in flight (409).
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_UNREACHABLE = (BotoConnectionError, HTTPClientError, IncompleteReadError, FlexibleChecksumError)
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


def _stored_sha256(head: HeadObjectOutputTypeDef) -> bytes | None:
    """The object's full-object SHA-256, if the server keeps one (a multipart
    upload's composite checksum is not a digest of the bytes)."""
    value = head.get("ChecksumSHA256")
    if not value or head.get("ChecksumType") == "COMPOSITE" or "-" in value:
        return None
    return base64.b64decode(value)


class S3Storage(RemoteStorage):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        parallel_jobs: int = 5,
        max_attempts: int = 5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.bucket = validate_bucket_name(bucket)
        self.prefix = validate_key(prefix) if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        self._endpoint_url = endpoint_url
        self._where = redact_url(endpoint_url) if endpoint_url else "AWS S3"
        config_args: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": max_attempts},
            "max_pool_connections": max(10, parallel_jobs * 2),
            "connect_timeout": connect_timeout_s,
            "read_timeout": read_timeout_s,
        }
        if endpoint_url:
            config_args["s3"] = {"addressing_style": "path"}
        self._config = Config(**config_args)
        self._lock = threading.Lock()
        self._s3: S3Client | None = None
        self._s3_pid = 0
        self._warned_unverified = False

    def _client(self) -> S3Client:
        """One client per process, made on first use (clients are thread-safe;
        sessions are not, and neither survives a fork)."""
        pid = os.getpid()
        with self._lock:
            if self._s3 is None or self._s3_pid != pid:
                session = boto3.session.Session()
                self._s3 = session.client(
                    "s3",
                    region_name=session.region_name or DEFAULT_REGION,
                    endpoint_url=self._endpoint_url,
                    config=self._config,
                )
                self._s3_pid = pid
            return self._s3

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
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"{where}: {code or status} {message}".rstrip())
        return Permanent(f"{where}: {code or status} {message}".rstrip())

    def _translate(self, exc: BotoCoreError | ClientError, action: str) -> WalBackupError:
        if isinstance(exc, ClientError):
            message = exc.response.get("Error", {}).get("Message", "")
            return self._classify(_error_code(exc), _status(exc), action, message)
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

    def upload_file(self, key: str, path: Path, expected_size: int) -> UploadResult:
        full_key = self._full_key(key)
        with open_segment_file(path, expected_size) as src:
            digest, size = sha256_stream(src)
            check_read_size(path, size, expected_size)
            src.seek(0)
            checksum = base64.b64encode(digest).decode()
            with self._errors(f"upload {key}"):
                client = self._client()
                try:
                    response = client.put_object(
                        Bucket=self.bucket,
                        Key=full_key,
                        Body=src,
                        ContentLength=size,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                        IfNoneMatch="*",
                    )
                except ClientError as exc:
                    code = _error_code(exc)
                    if code not in _EXISTS_CODES:
                        raise
                    self._check_existing(
                        client, key, full_key, digest, in_flight=code != "PreconditionFailed"
                    )
                    return UploadResult(key, size, digest.hex(), already_present=True)
        stored = response.get("ChecksumSHA256")
        if stored is None:
            if not self._warned_unverified:
                self._warned_unverified = True
                log.warning(
                    "%s: %s returns no SHA-256 checksum on upload; stored bytes go unverified",
                    self.url,
                    self._where,
                )
        elif stored != checksum:
            raise ChecksumMismatch(
                f"{self.url}: {self._where} stored {key} with sha256 "
                f"{base64.b64decode(stored).hex()}, but we sent {digest.hex()}: the stored "
                "object is not our segment"
            )
        return UploadResult(key, size, digest.hex(), already_present=False)

    def _check_existing(
        self, client: S3Client, key: str, full_key: str, digest: bytes, in_flight: bool
    ) -> None:
        """The key exists (or is being written): same bytes is success,
        different bytes a ``ChecksumMismatch``."""
        try:
            head = client.head_object(Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if in_flight and _status(exc) == 404:
                raise StorageUnavailable(
                    f"{self.url}: another upload of {key} is in flight; try again"
                ) from exc
            raise
        stored = _stored_sha256(head)
        if stored is None:
            body = client.get_object(Bucket=self.bucket, Key=full_key)["Body"]
            with body:
                stored, _ = sha256_stream(body)
        if stored != digest:
            raise checksum_mismatch(self.url, key, digest.hex(), stored.hex())

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        full_key = self._full_key(key)
        if offset < 0:
            raise InvalidInput(f"invalid read offset {offset} for {key}: negative")
        action = f"read {key}"
        with self._errors(action):
            client = self._client()
            try:
                if offset:
                    response = client.get_object(
                        Bucket=self.bucket, Key=full_key, Range=f"bytes={offset}-"
                    )
                else:
                    response = client.get_object(Bucket=self.bucket, Key=full_key)
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

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_key(prefix, prefix=True)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._errors(f"list {prefix!r}"):
            paginator = self._client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self._root) :], obj["Size"])

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
            if self._s3 is not None:
                self._s3.close()
                self._s3 = None


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
