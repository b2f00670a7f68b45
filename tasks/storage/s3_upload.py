"""One S3 upload: a conditional ``PutObject``, then proof of what the server stored.

The PUT is single-part and conditional (``If-None-Match: *``), carrying
``Content-MD5`` and ``x-amz-checksum-sha256`` of the bytes we hashed (servers
that verify refuse corrupted bytes with ``BadDigest``) and that SHA-256 as
metadata (``x-amz-meta-walbackup-sha256``). What was stored is then verified
without trusting any echo of our checksums (a server that does not verify,
like moto, stores anything and echoes our SHA-256 back):

- after a 2xx, the response ETag must be the MD5 of our bytes (a single-part
  ETag is the MD5 of the bytes the server received); when it is not, or not
  MD5-shaped (SSE-KMS, SSE-C, ``…-N``), the object is read back and hashed;
- on a mismatch the object is ours (If-None-Match succeeded): it is deleted
  (``If-Match`` its ETag) and ``UploadCorrupted`` raised, so the caller retries;
- on 412/409 the existing object is compared by its MD5 ETag, or by reading
  it back and hashing it: same bytes is ``already_present``, a corrupt copy
  of our own segment (its metadata names our SHA-256) is deleted as above,
  different bytes are a ``ChecksumMismatch``.
"""

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
    UploadResult,
    changed_since_hashed,
    check_read_size,
    checksum_mismatch,
    digest_segment_file,
    digest_stream,
    open_segment_file,
)
from tasks.storage.s3_errors import (
    CORRUPT_CODES,
    EXISTS_CODES,
    UNSUPPORTED_CODES,
    S3Errors,
    error_code,
    http_status,
)

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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class S3Uploads:
    """The uploads of one ``S3Storage``: ``client``, ``full_key`` and
    ``put_args`` are its own (one client per process; a key below the
    storage's prefix; ``S3Storage.put_args``, for every PUT)."""

    def __init__(
        self,
        bucket: str,
        errors: S3Errors,
        client: Callable[[], S3Client],
        full_key: Callable[[str], str],
        put_args: Mapping[str, Any],
    ) -> None:
        self._bucket = bucket
        self._errors = errors
        self._client = client
        self._full_key = full_key
        self._put_args = dict(put_args)
        self._warned_etag = False

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None
    ) -> UploadResult:
        """``RemoteStorage.upload_file``, as the module docstring tells."""
        full_key = self._full_key(key)
        with open_segment_file(path, expected_size, digest) as src:
            if digest is None:
                digest = digest_stream(src)
                check_read_size(path, digest.size, expected_size)
                src.seek(0)
            with self._errors(f"upload {key}"):
                client = self._client()
                try:
                    response = client.put_object(
                        Bucket=self._bucket,
                        Key=full_key,
                        Body=src,
                        ContentLength=expected_size,
                        ContentMD5=_b64(digest.md5),
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=_b64(digest.sha256),
                        Metadata={SHA256_METADATA: digest.sha256_hex},
                        IfNoneMatch="*",
                        **self._put_args,
                    )
                except ClientError as exc:
                    code = error_code(exc)
                    if code in CORRUPT_CODES:
                        raise self._corrupted(
                            key,
                            path,
                            digest,
                            f"{self._errors.where} refused the bytes it got ({code})",
                        ) from exc
                    if code not in EXISTS_CODES:
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
        etag = md5_etag(response)
        if etag == digest.md5_hex:
            return
        read_back, _ = self._read_back(client, key, "was gone when read back after its upload")
        if read_back == digest:
            if etag is not None and not self._warned_etag:
                self._warned_etag = True
                log.warning(
                    "%s: %s returns ETags that are not the MD5 of the bytes; uploads are "
                    "verified by reading them back",
                    self._errors.url,
                    self._errors.where,
                )
            return
        stored = (
            f"etag {response.get('ETag', '?')}, sha256 {read_back.sha256_hex} "
            f"({read_back.size} bytes)"
        )
        self._delete_corrupt(client, key, response.get("ETag"))
        raise self._corrupted(key, path, digest, f"{self._errors.where} stored {stored}")

    def _check_existing(
        self, client: S3Client, key: str, path: Path, digest: SegmentDigest, in_flight: bool
    ) -> None:
        """The key exists (or is being written): same bytes is success, a
        corrupt copy of our own segment is deleted (``UploadCorrupted``),
        different bytes are a ``ChecksumMismatch``. Never decided by a
        checksum the server merely echoes."""
        try:
            head = client.head_object(Bucket=self._bucket, Key=self._full_key(key))
        except ClientError as exc:
            if in_flight and http_status(exc) == 404:
                raise StorageUnavailable(
                    f"{self._errors.url}: another upload of {key} is in flight; try again"
                ) from exc
            raise
        if head.get("ContentLength") == digest.size and md5_etag(head) == digest.md5_hex:
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
        raise checksum_mismatch(self._errors.url, key, digest.sha256_hex, stored.sha256_hex, note)

    def _read_back(
        self, client: S3Client, key: str, gone: str
    ) -> tuple[SegmentDigest, Mapping[str, Any]]:
        """Hash the object as stored (no checksum the server sends is trusted).
        An object that vanished meanwhile is retryable: ``gone`` says when."""
        try:
            with self._errors(f"read back {key}"):
                response = client.get_object(Bucket=self._bucket, Key=self._full_key(key))
                with response["Body"] as body:
                    stored = digest_stream(body)
        except NotFound as exc:
            raise StorageUnavailable(f"{self._errors.url}: {key} {gone}; try again") from exc
        return stored, cast(Mapping[str, Any], response)

    def _delete_corrupt(self, client: S3Client, key: str, etag: str | None) -> None:
        """Delete the corrupt object we found under ``key``, only if it is still
        that object (``If-Match`` its ETag). Failing is logged, not raised: the
        next upload attempt finds the corrupt copy again and retries this."""
        full_key = self._full_key(key)
        try:
            try:
                if etag:
                    client.delete_object(Bucket=self._bucket, Key=full_key, IfMatch=etag)
                else:
                    client.delete_object(Bucket=self._bucket, Key=full_key)
            except ClientError as exc:
                if error_code(exc) in UNSUPPORTED_CODES or http_status(exc) == 501:
                    # No conditional delete here: after our If-None-Match
                    # create nobody else can have replaced the object.
                    client.delete_object(Bucket=self._bucket, Key=full_key)
                elif http_status(exc) in (404, 412):
                    log.warning(
                        "%s: corrupt object %s was deleted or replaced meanwhile; left alone",
                        self._errors.url,
                        key,
                    )
                else:
                    raise
        except (BotoCoreError, ClientError) as exc:
            log.error(
                "%s: could not delete corrupt object %s (%s); the next upload attempt retries",
                self._errors.url,
                key,
                self._errors.translate(exc, f"delete {key}"),
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
            f"{self._errors.url}: upload of {key} arrived corrupted: we sent md5 "
            f"{digest.md5_hex} (sha256 {digest.sha256_hex}), {stored}"
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
