"""One S3 upload: a conditional ``PutObject``, then proof of what the server stored.

The PUT is single-part and conditional (``If-None-Match: *``), carrying
``x-amz-checksum-sha256`` of the bytes we hashed (and ``Content-MD5`` when we
hashed that too; servers that verify refuse corrupted bytes with
``BadDigest``) and that SHA-256 as metadata (``x-amz-meta-walbackup-sha256``).

Where the server verifies the SHA-256 it is sent (``s3_probe`` asks it, as
AWS S3 does), its 2xx is the proof and no MD5 is computed. Elsewhere what
was stored is verified without trusting any echo of our checksums (a server
that does not verify, like moto, stores anything and echoes our SHA-256 back):

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

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.storage.base import (
    SegmentDigest,
    UploadResult,
    changed_since_hashed,
    check_read_size,
    digest_stream,
    open_segment_file,
)
from tasks.storage.s3_errors import CORRUPT_CODES, EXISTS_CODES, S3Errors, error_code
from tasks.storage.s3_stored import SHA256_METADATA, StoredObjects, b64, md5_etag

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class S3Uploads:
    """The uploads of one ``S3Storage``: ``client``, ``full_key``, ``put_args``
    and ``server_verifies`` are its own (one client per process; a key below
    the storage's prefix; ``S3Storage.put_args``, for every PUT; whether the
    server verifies checksums, ``ChecksumProbe.verifies``)."""

    def __init__(
        self,
        bucket: str,
        errors: S3Errors,
        client: Callable[[], S3Client],
        full_key: Callable[[str], str],
        put_args: Mapping[str, Any],
        server_verifies: Callable[[], bool],
    ) -> None:
        self._bucket = bucket
        self._errors = errors
        self._client = client
        self._full_key = full_key
        self._stored = StoredObjects(bucket, errors, full_key)
        self._put_args = dict(put_args)
        self._server_verifies = server_verifies
        self._warned_etag = False

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None
    ) -> UploadResult:
        """``RemoteStorage.upload_file``, as the module docstring tells."""
        full_key = self._full_key(key)
        trusted = self._server_verifies()
        with open_segment_file(path, expected_size, digest) as src:
            if digest is None or not (trusted or digest.md5):
                hashed = digest_stream(src, md5=not trusted)
                check_read_size(path, hashed.size, expected_size)
                if digest is not None and not hashed.matches(digest):
                    raise changed_since_hashed(path, digest, hashed)
                digest = hashed
                src.seek(0)
            args: dict[str, Any] = {"ContentMD5": b64(digest.md5)} if digest.md5 else {}
            with self._errors(f"upload {key}"):
                client = self._client()
                try:
                    response = client.put_object(
                        Bucket=self._bucket,
                        Key=full_key,
                        Body=src,
                        ContentLength=expected_size,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=b64(digest.sha256),
                        Metadata={SHA256_METADATA: digest.sha256_hex},
                        IfNoneMatch="*",
                        **args,
                        **self._put_args,
                    )
                except ClientError as exc:
                    code = error_code(exc)
                    if code in CORRUPT_CODES:
                        raise self._stored.corrupted(
                            key,
                            path,
                            digest,
                            f"{self._errors.where} refused the bytes it got ({code})",
                        ) from exc
                    if code not in EXISTS_CODES:
                        raise
                    md5_hex = self._stored.check_existing(
                        client, key, path, digest, trusted, in_flight=code != "PreconditionFailed"
                    )
                    return UploadResult(
                        key, expected_size, digest.sha256_hex, md5_hex, already_present=True
                    )
                etag = md5_etag(response)
                if trusted and (not digest.md5 or etag in (None, digest.md5_hex)):
                    # The server checked the bytes against our SHA-256; with no
                    # MD5 of ours, its ETag (the MD5 it computed) goes to the ledger.
                    md5_hex = digest.md5_hex or etag or ""
                else:
                    self._verify_created(client, key, path, digest, response)
                    md5_hex = digest.md5_hex
        return UploadResult(key, expected_size, digest.sha256_hex, md5_hex, already_present=False)

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
        read_back, _ = self._stored.read_back(
            client, key, "was gone when read back after its upload"
        )
        if read_back.matches(digest):
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
        self._stored.delete_corrupt(client, key, response.get("ETag"))
        raise self._stored.corrupted(key, path, digest, f"{self._errors.where} stored {stored}")
