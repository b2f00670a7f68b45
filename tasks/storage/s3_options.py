"""What an ``S3Storage`` is asked for, checked before anything is contacted:
the bucket's name, server-side encryption, the upload check."""

from __future__ import annotations

import re
from typing import Any

from tasks.errors import InvalidInput

SSE_MODES = ("AES256", "aws:kms")
"""Server-side encryption a PUT may ask for: S3-managed keys, or a KMS key."""
UPLOAD_CHECKS = ("auto", "etag")
"""How an upload is proven stored (``Settings.s3_upload_check``)."""

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def validate_bucket_name(bucket: str) -> str:
    """S3's bucket naming rules (the ones that matter for a URL)."""
    if _BUCKET_NAME.fullmatch(bucket) is None or ".." in bucket or _IPV4.fullmatch(bucket):
        raise InvalidInput(
            f"invalid S3 bucket name {bucket!r}: 3 to 63 lower-case letters, digits, '.' "
            "or '-', starting and ending with a letter or digit"
        )
    return bucket


def sse_args(sse: str | None, kms_key_id: str | None) -> dict[str, Any]:
    if sse is not None and sse not in SSE_MODES:
        raise InvalidInput(f"server-side encryption {sse!r}: expected {' or '.join(SSE_MODES)}")
    """The arguments every PUT carries for server-side encryption ``sse``."""
    if kms_key_id and sse != "aws:kms":
        raise InvalidInput("a KMS key id is only used with server-side encryption aws:kms")
    args: dict[str, Any] = {"ServerSideEncryption": sse} if sse else {}
    if kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args
