"""``s3://BUCKET/PREFIX`` through boto3, on AWS or any S3-compatible endpoint.

``S3Storage`` holds the bucket, the prefix and its boto3 clients
(``s3_clients``: one per process, made again after S3 refuses the credentials,
so that rotated ones are found), and reads, lists, deletes and probes. Two
jobs live beside it: an upload and its verification (``s3_upload``), and the
translation of every botocore error into ``tasks.errors`` (``s3_errors``;
every call here runs under it).

Whole-object reads ask for the stored checksum (``ChecksumMode=ENABLED``): a
body that does not match it raises ``ChecksumMismatch`` (the stored object is
corrupt) at its end.

Uploads skip their MD5 where the server verifies the SHA-256 sent with them
(``s3_probe``; ``upload_check="etag"`` never skips it).

Server-side encryption (``sse``, ``sse_kms_key_id``) is asked for on every
PUT through ``put_args``, the one place any kind of PUT takes its extra
arguments from. Under SSE-KMS an ETag is not the MD5 of the bytes, so
listings report none (``ObjectInfo.etag``) and uploads are verified by
reading back (``s3_upload``).

Failures surface quickly: botocore makes at most ``max_attempts`` attempts per
request (a node worker passes 1 and retries with its own backoff) and waits
``connect_timeout_s``/``read_timeout_s``; ``probe`` uses a separate client
with one attempt and ``probe_timeout_s``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from botocore.config import Config
from botocore.exceptions import ClientError

from tasks.core.urls import redact, validate_bucket_name
from tasks.errors import InvalidInput, UploadCorrupted
from tasks.storage import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT_S,
    s3_clients,
)
from tasks.storage.base import (
    DELETE_BATCH,
    ObjectInfo,
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    validate_key,
)
from tasks.storage.s3_errors import S3Errors, TranslatedBody, error_code
from tasks.storage.s3_options import UPLOAD_CHECKS, sse_args
from tasks.storage.s3_probe import ChecksumProbe
from tasks.storage.s3_small import probe_write, put_small
from tasks.storage.s3_upload import S3Uploads

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef, PaginatorConfigTypeDef

log = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT_S = 1.0


class S3Storage(RemoteStorage):
    """S3 storage. ``max_attempts`` is botocore's total attempts per request
    (1: every failure reaches the caller at once, who retries with its own
    backoff); ``connect_timeout_s``/``read_timeout_s`` bound how long one
    attempt waits to connect and, once connected, for each read of the
    answer; ``probe_timeout_s`` is both timeouts of ``probe`` (one attempt).
    ``parallel_jobs`` sizes the connection pool. ``sse`` (``SSE_MODES``) and
    ``sse_kms_key_id`` go on every PUT (``put_args``)."""

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
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        upload_check: str = "auto",
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be >= 1, got {max_attempts}")
        self._put_args = sse_args(sse, sse_kms_key_id)
        # Under SSE-KMS an ETag is not the MD5 of the bytes (the scrub compares them).
        self._etags_are_md5 = sse != "aws:kms"
        self.bucket = validate_bucket_name(bucket)
        self.prefix = validate_key(prefix) if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        where = redact(endpoint_url) if endpoint_url else "AWS S3"
        self._clients = s3_clients.ClientCache(endpoint_url)
        self._errors = S3Errors(self.url, bucket, where, on_refused=self._refused)
        common: dict[str, Any] = {
            # Checksums of responses are validated where we ask for them
            # (ChecksumMode on reads), not on the read-backs we hash ourselves.
            "response_checksum_validation": "when_required",
            # No SHA-256 pass of botocore's over every body for SigV4 (it signs
            # payloads on http:// endpoints): every PUT carries Content-MD5 or
            # x-amz-checksum-sha256 (a segment at least the latter), signed
            # headers, so the body stays bound to the signature, as on https.
            "s3": {"payload_signing_enabled": False},
        }
        if endpoint_url:
            common["s3"]["addressing_style"] = "path"
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
        if upload_check not in UPLOAD_CHECKS:
            raise InvalidInput(f"upload check {upload_check!r}: expected one of {UPLOAD_CHECKS}")
        self._checksums = ChecksumProbe(self._probe_client, bucket, self._root, self._put_args,
                                        where, enabled=upload_check == "auto")  # fmt: skip
        self._uploads = S3Uploads(bucket, self._errors, self._client, self._full_key,
                                  self.put_args(), self._checksums.verifies)  # fmt: skip

    @property
    def lists_md5_etags(self) -> bool:
        return self._etags_are_md5

    @property
    def needs_md5(self) -> bool:
        """No MD5 where the server verifies the SHA-256 of what it stores."""
        return not self._checksums.verifies()

    def put_args(self) -> dict[str, Any]:
        """What every PUT of this storage carries besides its own arguments:
        the server-side encryption asked for (none: the bucket's default)."""
        return dict(self._put_args)

    def _client(self) -> S3Client:
        """One client per process, made on first use (``s3_clients``)."""
        return self._clients.get("main", self._config)

    def _probe_client(self) -> S3Client:
        return self._clients.get("probe", self._probe_config)

    def _refused(self) -> None:
        """S3 refused our credentials: the next attempt reads them again
        (rotated keys), at most once per ``RECHECK_CREDENTIALS_S``."""
        if self._clients.forget():
            every_s = s3_clients.RECHECK_CREDENTIALS_S
            log.info("Storage %s: credentials refused; the next attempt reads them again "
                     "(at most every %g s)", self.url, every_s)  # fmt: skip

    def _full_key(self, key: str) -> str:
        return self._root + validate_key(key)

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        """A conditional PUT, then proof of what was stored (``s3_upload``)."""
        return self._uploads.upload_file(key, path, expected_size, digest)

    def create_bytes(self, key: str, data: bytes) -> bool:
        """A conditional PUT, verified by the ETag or else by reading it back."""
        with self._errors(f"write {key}"):
            created, etag = put_small(self._client(), self.bucket, self._full_key(key), data,
                                      self.put_args(), create=True)  # fmt: skip
        if not created:
            return False
        if etag != hashlib.md5(data, usedforsecurity=False).hexdigest() and (
            self.read_bytes(key) != data
        ):
            # Ours (If-None-Match created it): nobody else relies on it yet.
            self.delete(key)
            raise UploadCorrupted(f"{self.url}: write of {key} arrived corrupted; not kept")
        return True

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
                if error_code(exc) != "InvalidRange":
                    raise
                # S3 refuses an empty range: reading from the very end is fine.
                size = client.head_object(Bucket=self.bucket, Key=full_key)["ContentLength"]
                if offset != size:
                    raise InvalidInput(
                        f"invalid read offset {offset} for {key}: the object has {size} bytes"
                    ) from exc
                return io.BytesIO()
        return cast(BinaryIO, TranslatedBody(response["Body"], self._errors, action))

    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_key(prefix, prefix=True)
        return self._list(prefix, start_after, limit)

    def _list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        with self._errors(f"list {prefix!r}"):
            paginator = self._client().get_paginator("list_objects_v2")
            paging: PaginatorConfigTypeDef = {}
            if limit is not None:
                paging = {"MaxItems": limit, "PageSize": min(limit, 1000)}
            # Every key below the root sorts after the root itself.
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._root + prefix,
                StartAfter=self._root + start_after,
                PaginationConfig=paging,
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "").strip('"') if self._etags_are_md5 else ""
                    yield ObjectInfo(obj["Key"][len(self._root) :], obj["Size"], etag or None)

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        with self._errors(f"delete {key}"):
            self._client().delete_object(Bucket=self.bucket, Key=full_key)

    def probe(self, write: bool = False) -> None:
        """One ``ListObjectsV2`` (one key at most), or with ``write`` one
        conditional PUT that stores nothing new (``s3_small.probe_write``),
        through a client with a single attempt and ``probe_timeout_s`` timeouts."""
        with self._errors("probe"):
            client = self._probe_client()
            if write:
                probe_write(client, self.bucket, self._root, self.put_args())
            else:
                client.list_objects_v2(Bucket=self.bucket, Prefix=self._root, MaxKeys=1)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(f"write {key}"):
            put_small(self._client(), self.bucket, self._full_key(key), data, self.put_args(),
                      create=False)  # fmt: skip

    def delete_many(self, keys: Iterable[str]) -> int:
        deleted = 0
        action = "delete objects"
        with self._errors(action):
            client = self._client()
            # Keys are checked as they come: a bad one stops before its batch.
            full_keys = (self._full_key(key) for key in keys)
            while batch := list(itertools.islice(full_keys, DELETE_BATCH)):
                objects: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in batch]
                response = client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if failed := response.get("Errors"):
                    first = failed[0]
                    raise self._errors.classify(
                        first.get("Code", ""),
                        0,
                        f"{action}: {len(failed)} objects not deleted, e.g. {first.get('Key')}",
                        first.get("Message", ""),
                    )
                deleted += len(batch)
        return deleted

    def close(self) -> None:
        self._clients.close()
