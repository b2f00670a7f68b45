"""Remote storage: ``open_storage(url)`` picks the backend for a URL.

``file:///PATH`` is a local directory (``local.py``); ``s3://BUCKET[/PREFIX]``
is S3 or an S3-compatible endpoint through boto3 (``s3.py``, with
``s3_upload.py`` and ``s3_errors.py``; imported only when used).
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.urls import redact, split_storage_url
from tasks.errors import InvalidInput
from tasks.storage.base import (
    ObjectInfo,
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    digest_segment_file,
    segment_key,
    timeline_prefix,
)
from tasks.storage.local import LocalStorage

__all__ = [
    "ObjectInfo",
    "RemoteStorage",
    "SegmentDigest",
    "UploadResult",
    "digest_segment_file",
    "open_storage",
    "segment_key",
    "timeline_prefix",
]

# S3 client defaults (``tasks.storage.s3`` is imported only when used).
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 20.0


def open_storage(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    parallel_jobs: int = 5,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    create: bool = True,
    sse: str | None = None,
    sse_kms_key_id: str | None = None,
    upload_check: str = "auto",
) -> RemoteStorage:
    """The backend for ``url``; a malformed or unsupported URL raises
    ``InvalidInput`` before anything is created or contacted.

    S3 only: ``s3_endpoint_url`` is an S3-compatible endpoint (default AWS);
    ``parallel_jobs`` sizes the connection pool; ``max_attempts`` is how many
    times in all botocore tries a request before the error reaches us;
    ``connect_timeout_s`` and ``read_timeout_s`` bound one attempt's connect
    and each wait for the server's answer. The defaults (3 attempts, 5 s,
    20 s) suit ``walbackup fetch``. A node worker, whose pipeline retries
    with its own backoff and must see (and count) every failed attempt,
    passes ``max_attempts=1, connect_timeout_s=2, read_timeout_s=10``.
    ``sse``/``sse_kms_key_id``: server-side encryption for every PUT
    (``S3Storage.put_args``); ``file://`` has none. ``upload_check``:
    ``Settings.s3_upload_check``.

    ``create=False`` (readers): a ``file://`` directory that does not exist is
    ``StorageUnavailable``, not created (an empty archive would read as "no
    such segment")."""
    where = split_storage_url(url)
    if where.scheme == "file":
        return LocalStorage(Path(where.location), create=create)
    from tasks.storage.s3 import S3Storage

    try:
        return S3Storage(
            where.location,
            where.prefix,
            endpoint_url=s3_endpoint_url,
            parallel_jobs=parallel_jobs,
            max_attempts=max_attempts,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            sse=sse,
            sse_kms_key_id=sse_kms_key_id,
            upload_check=upload_check,
        )
    except InvalidInput as exc:
        raise InvalidInput(f"invalid storage URL {redact(url)!r}: {exc}") from None
