"""Small objects on S3 (ledger pages, the retention marker, the write probe):
one PUT with Content-MD5."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.storage.s3_errors import EXISTS_CODES, error_code
from tasks.storage.s3_stored import md5_etag

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WRITE_PROBE_KEY = "walbackup-write-probe"
WRITE_PROBE_BODY = b"walbackup: may we write here?\n"


def put_small(
    client: S3Client,
    bucket: str,
    full_key: str,
    data: bytes,
    put_args: Mapping[str, Any],
    *,
    create: bool,
) -> tuple[bool, str | None]:
    """PUT ``data`` with the storage's ``put_args`` (server-side encryption);
    with ``create``, only if the key is free (``If-None-Match: *``): whether
    it was stored, and the MD5 ETag the server answered (``None`` when the
    ETag is no MD5). Other botocore errors reach the caller's translation."""
    md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    extra: dict[str, Any] = {**put_args, **({"IfNoneMatch": "*"} if create else {})}
    try:
        response = client.put_object(
            Bucket=bucket, Key=full_key, Body=data, ContentMD5=md5, **extra
        )
    except ClientError as exc:
        if create and error_code(exc) in EXISTS_CODES:
            return False, None
        raise
    return True, md5_etag(response)


def probe_write(client: S3Client, bucket: str, root: str, put_args: Mapping[str, Any]) -> None:
    """A PUT that S3 authorizes as an upload (conditional, with ``put_args``)
    but that writes nothing new: ``If-None-Match: *`` on ``WRITE_PROBE_KEY``
    below ``root``, which the first probe creates. S3 authorizes a request
    before it evaluates its preconditions (a bucket policy can even test
    ``s3:if-none-match``): 403 means writes are still denied, 412 that they
    are allowed. So a long outage piles no objects or versions up in a
    versioned bucket, and under object lock only the one probe object is kept
    (its Content-MD5 is what object lock asks of a PUT)."""
    put_small(client, bucket, root + WRITE_PROBE_KEY, WRITE_PROBE_BODY, put_args, create=True)
