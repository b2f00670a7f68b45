"""What an ``S3Storage`` is asked for, checked before anything is contacted:
server-side encryption, the upload check (the bucket's name: ``tasks.core.urls``)."""

from __future__ import annotations

from typing import Any

from tasks.errors import InvalidInput

SSE_MODES = ("AES256", "aws:kms")
"""Server-side encryption a PUT may ask for: S3-managed keys, or a KMS key."""
UPLOAD_CHECKS = ("auto", "etag")
"""How an upload is proven stored (``Settings.s3_upload_check``)."""


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
