"""Remote storage: ``open_storage(url)`` picks the backend for a URL.

``file:///PATH`` is a local directory (``local.py``); ``s3://BUCKET[/PREFIX]``
is S3 or an S3-compatible endpoint through boto3 (``s3.py``, imported only
when used).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasks.errors import InvalidInput
from tasks.storage.base import (
    ObjectInfo,
    RemoteStorage,
    UploadResult,
    redact_url,
    segment_key,
    timeline_prefix,
)
from tasks.storage.local import LocalStorage

__all__ = [
    "ObjectInfo",
    "RemoteStorage",
    "UploadResult",
    "open_storage",
    "segment_key",
    "timeline_prefix",
]

_EXPECTED = "expected s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"


def open_storage(
    url: str, *, s3_endpoint_url: str | None = None, parallel_jobs: int = 5
) -> RemoteStorage:
    """The backend for ``url``; a malformed or unsupported URL raises
    ``InvalidInput`` before anything is created or contacted."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidInput(f"invalid storage URL {shown!r}: {_EXPECTED}") from None
    if parts.query or parts.fragment:
        raise InvalidInput(f"invalid storage URL {shown!r}: no query or fragment allowed")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput(
                f"invalid storage URL {shown!r}: a file URL takes an absolute path, file:///PATH"
            )
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise InvalidInput(
                f"invalid storage URL {shown!r}: credentials do not belong in the URL; "
                "boto3 reads them from its standard chain (environment, ~/.aws, instance role)"
            )
        if not parts.netloc:
            raise InvalidInput(f"invalid storage URL {shown!r}: no bucket; {_EXPECTED}")
        from tasks.storage.s3 import S3Storage

        try:
            return S3Storage(
                parts.netloc,
                unquote(parts.path).strip("/"),
                endpoint_url=s3_endpoint_url,
                parallel_jobs=parallel_jobs,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"invalid storage URL {shown!r}: {exc}") from None
    raise InvalidInput(f"unsupported storage URL {shown!r}: {_EXPECTED}")
