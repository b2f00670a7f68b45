"""botocore's errors, translated into ``tasks.errors`` in this one place.

``S3Errors`` knows one bucket and endpoint; ``with errors(action):`` turns any
``BotoCoreError``/``ClientError`` raised inside into the most specific
walbackup error, naming the action, and chains the original; an
``AccessDenied`` leaving the block (translated there or raised inside) also
calls ``on_refused``, with which a storage reads its credentials again
(``s3_clients``). Code that must
branch on a ``ClientError`` first (412 on a conditional create, an empty
range) reads it with ``error_code``/``http_status`` and the code sets below,
then lets the rest through to ``S3Errors``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from tasks.errors import (
    AccessDenied,
    BucketMissing,
    ChecksumMismatch,
    NotFound,
    Permanent,
    StorageUnavailable,
    UploadCorrupted,
    WalBackupError,
)
from tasks.storage import s3_clients

if TYPE_CHECKING:
    from botocore.response import StreamingBody

_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled"}
)  # fmt: skip
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
     "ServiceUnavailable", "IncompleteBody"}
)  # fmt: skip
CORRUPT_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
"""The server computed another checksum over the bytes it received than we sent."""
UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
"""A server that does not take If-Match on DELETE."""
EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
"""The key exists (412), or another conditional write to it is in flight (409)."""
_UNREACHABLE = (BotoConnectionError, HTTPClientError, IncompleteReadError)
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Errors:
    """The translation for one storage: ``url`` and ``where`` (the endpoint,
    redacted, or "AWS S3") name it in every message; ``on_refused`` is called
    whenever the storage's credentials are refused."""

    def __init__(
        self, url: str, bucket: str, where: str, on_refused: Callable[[], object] = lambda: None
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.where = where
        self._on_refused = on_refused

    def classify(self, code: str, status: int, action: str, message: str) -> WalBackupError:
        """The error for an S3 error ``code`` (or HTTP ``status``) that ``action`` got."""
        where = f"{self.url} at {self.where}: {action}"
        if code == "NoSuchBucket":
            return BucketMissing(f"bucket {self.bucket!r} does not exist at {self.where}")
        if code in _ACCESS_CODES or status == 403:
            return AccessDenied(
                f"{where}: access denied ({code or status}); check the credentials boto3 "
                "found and the bucket's policy (read again after a refusal, at most every "
                f"{s3_clients.RECHECK_CREDENTIALS_S:g} s: rotated keys in a credentials file "
                "are found; changed environment variables need a restart)"
            )
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(f"{where}: no such object")
        if code in CORRUPT_CODES:
            return UploadCorrupted(
                f"{where}: {code}: the server received other bytes than we sent "
                f"(corrupted in transit) {message}".rstrip()
            )
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"{where}: {code or status} {message}".rstrip())
        return Permanent(f"{where}: {code or status} {message}".rstrip())

    def translate(self, exc: BotoCoreError | ClientError, action: str) -> WalBackupError:
        if isinstance(exc, ClientError):
            message = exc.response.get("Error", {}).get("Message", "")
            return self.classify(error_code(exc), http_status(exc), action, message)
        if isinstance(exc, FlexibleChecksumError):
            return ChecksumMismatch(
                f"{self.url}: {action}: checksum mismatch: the stored object is corrupt (the "
                f"bytes {self.where} returned do not match the checksum stored with them)"
            )
        if isinstance(exc, _UNREACHABLE):
            return StorageUnavailable(
                f"{self.url}: {action}: cannot reach {self.where} ({type(exc).__name__})"
            )
        if isinstance(exc, _NO_CREDENTIALS):
            return AccessDenied(
                f"{self.url}: {action}: no usable AWS credentials in boto3's standard chain "
                "(environment, ~/.aws, instance role)"
            )
        if isinstance(exc, ProfileNotFound):
            return AccessDenied(f"{self.url}: {action}: {exc} (AWS_PROFILE, ~/.aws/config)")
        return Permanent(f"{self.url}: {action}: {type(exc).__name__}: {exc}")

    @contextmanager
    def __call__(self, action: str) -> Iterator[None]:
        """Translate what botocore raises inside the block."""
        try:
            try:
                yield
            except (BotoCoreError, ClientError) as exc:
                raise self.translate(exc, action) from exc
        except AccessDenied:
            self._on_refused()
            raise


class TranslatedBody(io.BufferedIOBase):
    """A GET response body whose read errors arrive as walbackup errors."""

    def __init__(self, body: StreamingBody, errors: S3Errors, action: str) -> None:
        super().__init__()
        self._body = body
        self._errors = errors
        self._action = action

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with self._errors(self._action):
            return self._body.read(None if size is None or size < 0 else size)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
