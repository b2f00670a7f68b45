"""What an S3 key holds, proven by its bytes: an existing object compared
with ours, an object read back and hashed, a corrupt copy of ours deleted,
and the error that says which side changed (``s3_upload`` uses them)."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from tasks.errors import (
    NotFound,
    SegmentFileError,
    StorageUnavailable,
    UploadCorrupted,
    WalBackupError,
)
from tasks.storage.base import (
    SegmentDigest,
    changed_since_hashed,
    checksum_mismatch,
    digest_segment_file,
    digest_stream,
)
from tasks.storage.s3_errors import UNSUPPORTED_CODES, S3Errors, error_code, http_status

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

SHA256_METADATA = "walbackup-sha256"
"""User metadata (``x-amz-meta-walbackup-sha256``) naming the SHA-256 the writer
meant to store: tells a corrupt copy of our own segment from someone else's."""

_KMS_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


def md5_etag(response: Mapping[str, Any]) -> str | None:
    """The MD5 of the object's bytes, lower-case hex, when the ETag of a PUT,
    HEAD or GET response is one: a single-part object's ETag is, unless it is
    encrypted with SSE-KMS or SSE-C (multipart ETags end in ``-N``)."""
    if response.get("ServerSideEncryption") in _KMS_ENCRYPTION or response.get(
        "SSECustomerAlgorithm"
    ):
        return None
    match = _MD5_ETAG.fullmatch(str(response.get("ETag", "")))
    return match.group(1).lower() if match else None


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class StoredObjects:
    """The keys of one bucket: ``full_key`` maps a key below the storage's
    prefix to the bucket's; ``errors`` names the storage in every error."""

    def __init__(self, bucket: str, errors: S3Errors, full_key: Callable[[str], str]) -> None:
        self.bucket = bucket
        self.errors = errors
        self.full_key = full_key

    def check_existing(
        self,
        client: S3Client,
        key: str,
        path: Path,
        digest: SegmentDigest,
        trusted: bool,
        in_flight: bool,
    ) -> str:
        """The key exists (or is being written): same bytes is success (the
        MD5 of the stored object is returned, ``""`` if unknown), a corrupt
        copy of our own segment is deleted (``UploadCorrupted``), different
        bytes are a ``ChecksumMismatch``. Never decided by a checksum the
        server merely echoes: its stored SHA-256 counts only where it verifies
        (``trusted``)."""
        try:
            extra: dict[str, Any] = {"ChecksumMode": "ENABLED"} if trusted else {}
            head = client.head_object(Bucket=self.bucket, Key=self.full_key(key), **extra)
        except ClientError as exc:
            if in_flight and http_status(exc) == 404:
                raise StorageUnavailable(
                    f"{self.errors.url}: another upload of {key} is in flight; try again"
                ) from exc
            raise
        if head.get("ContentLength") == digest.size:
            etag = md5_etag(head)
            if digest.md5 and etag == digest.md5_hex:
                return etag
            if trusted and head.get("ChecksumSHA256") == b64(digest.sha256):
                return etag or ""
        stored, response = self.read_back(client, key, "was deleted while we compared it")
        if stored.matches(digest):
            return stored.md5_hex
        meant = response.get("Metadata", {}).get(SHA256_METADATA)
        if meant == digest.sha256_hex:
            # Someone (we, most likely, with the reply lost) wrote our segment
            # and the server stored other bytes: not a split brain, a corrupt copy.
            self.delete_corrupt(client, key, response.get("ETag"))
            raise self.corrupted(
                key,
                path,
                digest,
                f"an earlier upload of it left sha256 {stored.sha256_hex} stored",
            )
        note = ""
        if meant is not None and meant != stored.sha256_hex:
            note = f" The stored object is corrupt too: its writer meant sha256 {meant}."
        raise checksum_mismatch(self.errors.url, key, digest.sha256_hex, stored.sha256_hex, note)

    def read_back(
        self, client: S3Client, key: str, gone: str
    ) -> tuple[SegmentDigest, Mapping[str, Any]]:
        """Hash the object as stored (no checksum the server sends is trusted).
        An object that vanished meanwhile is retryable: ``gone`` says when."""
        try:
            with self.errors(f"read back {key}"):
                response = client.get_object(Bucket=self.bucket, Key=self.full_key(key))
                with response["Body"] as body:
                    stored = digest_stream(body)
        except NotFound as exc:
            raise StorageUnavailable(f"{self.errors.url}: {key} {gone}; try again") from exc
        return stored, cast(Mapping[str, Any], response)

    def delete_corrupt(self, client: S3Client, key: str, etag: str | None) -> None:
        """Delete the corrupt object we found under ``key``, only if it is still
        that object (``If-Match`` its ETag). Failing is logged, not raised: the
        next upload attempt finds the corrupt copy again and retries this."""
        full_key = self.full_key(key)
        try:
            try:
                if etag:
                    client.delete_object(Bucket=self.bucket, Key=full_key, IfMatch=etag)
                else:
                    client.delete_object(Bucket=self.bucket, Key=full_key)
            except ClientError as exc:
                if error_code(exc) in UNSUPPORTED_CODES or http_status(exc) == 501:
                    # No conditional delete here: after our If-None-Match
                    # create nobody else can have replaced the object.
                    client.delete_object(Bucket=self.bucket, Key=full_key)
                elif http_status(exc) in (404, 412):
                    log.warning(
                        "%s: corrupt object %s was deleted or replaced meanwhile; left alone",
                        self.errors.url,
                        key,
                    )
                else:
                    raise
        except (BotoCoreError, ClientError) as exc:
            log.error(
                "%s: could not delete corrupt object %s (%s); the next upload attempt retries",
                self.errors.url,
                key,
                self.errors.translate(exc, f"delete {key}"),
            )

    def corrupted(self, key: str, path: Path, digest: SegmentDigest, stored: str) -> WalBackupError:
        """The error for an upload whose bytes arrived corrupted (``stored``
        says what the server has): if the local file no longer matches
        ``digest`` it changed under us (``SegmentFileError``), else the bytes
        were corrupted on the way (``UploadCorrupted``, retryable). Logged at
        ERROR either way."""
        sent = f"sha256 {digest.sha256_hex}" + (f", md5 {digest.md5_hex}" if digest.md5 else "")
        what = f"{self.errors.url}: upload of {key} arrived corrupted: we sent {sent}, {stored}"
        try:
            now = digest_segment_file(path, digest.size, md5=bool(digest.md5))
        except SegmentFileError as exc:
            error: WalBackupError = exc
        else:
            if not now.matches(digest):
                error = changed_since_hashed(path, digest, now)
            else:
                error = UploadCorrupted(f"{what}; the object is not kept: send it again")
        if isinstance(error, UploadCorrupted):
            log.error("%s", error)
        else:
            log.error("%s; %s", what, error)
        return error
