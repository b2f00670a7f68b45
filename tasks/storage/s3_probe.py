"""Does the S3 endpoint verify the checksums it is sent?

AWS S3 refuses a PUT whose body does not match its ``x-amz-checksum-sha256``
(``BadDigest``): there, a segment's SHA-256, which we compute anyway (the
nodes' agreement and the ledger compare it), is all the proof an upload
needs. A server that ignores checksums (moto, some S3-compatible stores)
stores whatever arrived, so every upload to it also needs our MD5 to compare
with its ETag (``s3_upload``): ~24 ms of CPU per 16 MiB segment here.

``ChecksumProbe`` asks the server directly instead of trusting what it says
of itself: a PUT shaped like a segment upload (``x-amz-sdk-checksum-algorithm``
and ``x-amz-checksum-sha256``, the storage's encryption arguments) of a few
bytes whose SHA-256 does not match. Refused with ``BadDigest``: the server
verifies. Stored: it does not, and the probe object is deleted (one fixed
key, so a bucket policy without DELETE leaves one object, not one per
probe). Anything else (unreachable, access denied, another error) tells
nothing, and uploads keep the MD5 until a probe answers; such probes are
retried after ``RETRY_S``, doubling up to ``PROBE_TTL_S``.

Trusting the answer is a decision, not a proof: for up to ``PROBE_TTL_S``
an endpoint swapped behind the same URL for one that does not verify would
go unchecked (then the next probe notices). ``WALBACKUP_S3_UPLOAD_CHECK=etag``
never trusts the server.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from tasks.storage.s3_errors import error_code
from tasks.storage.s3_stored import b64

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

PROBE_TTL_S = 600.0
"""How long an answer is trusted before the server is asked again."""
RETRY_S = 60.0
"""After a probe that told nothing, the next one waits this long."""
FIRST_WAIT_S = 5.0
"""How long an upload waits for the first probe another thread runs."""
PROBE_KEY = "walbackup-checksum-probe"
VERIFIED_CODES = frozenset({"BadDigest"})
"""What S3 answers a body that does not match its checksum (not
``XAmzContentSHA256Mismatch``: that is the SigV4 payload hash, which our
unsigned payloads do not send)."""
PROBE_BODY = b"walbackup: does this server verify x-amz-checksum-sha256?\n"
WRONG_SHA256 = b64(hashlib.sha256(b"not the probe body").digest())


class ChecksumProbe:
    """Whether the server behind ``client()`` verifies checksums (``verifies``),
    probed under ``root`` (the storage's prefix, ``""`` or ending in ``/``)
    with the storage's ``put_args``. ``enabled`` false: never trusted, never
    probed (``WALBACKUP_S3_UPLOAD_CHECK=etag``)."""

    def __init__(
        self,
        client: Callable[[], S3Client],
        bucket: str,
        root: str,
        put_args: Mapping[str, Any],
        where: str,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._root = root
        self._put_args = dict(put_args)
        self._where = where
        self._enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._verifies = False
        self._next = float("-inf")
        self._said: bool | None = None
        self._retry_s = RETRY_S
        self._said_delete = False

    def verifies(self) -> bool:
        """The last answer (``False`` until one came). When it is due, the
        calling thread probes; the others wait for the first probe (the
        first uploads would hash an MD5 for nothing), and later get the last
        answer rather than wait for the server."""
        if not self._enabled or self._clock() < self._next:
            return self._verifies
        first = self._said is None
        if not self._lock.acquire(timeout=FIRST_WAIT_S if first else 0):
            return self._verifies
        try:
            if self._clock() >= self._next:
                answer = self._probe()
                self._verifies = bool(answer)
                if answer is None:
                    self._next = self._clock() + self._retry_s
                    self._retry_s = min(self._retry_s * 2, PROBE_TTL_S)
                else:
                    self._next = self._clock() + PROBE_TTL_S
                    self._retry_s = RETRY_S
                    self._tell(answer)
        finally:
            self._lock.release()
        return self._verifies

    def _probe(self) -> bool | None:
        key = f"{self._root}{PROBE_KEY}"
        try:
            client = self._client()
            client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=PROBE_BODY,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=WRONG_SHA256,
                **self._put_args,
            )
        except Exception as exc:  # any failure tells nothing: MD5 until one answers
            code = error_code(exc) if isinstance(exc, ClientError) else ""
            if code in VERIFIED_CODES:
                return True
            if self._retry_s == RETRY_S:  # once per failing streak
                log.warning(
                    "%s: the checksum probe failed (%s); uploads are checked by their MD5 "
                    "ETag until it answers",
                    self._where,
                    code or exc,
                )
            return None
        try:
            client.delete_object(Bucket=self._bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            if not self._said_delete:
                self._said_delete = True
                log.warning(
                    "%s: could not delete the checksum probe %s (%s); it stays, overwritten "
                    "by later probes",
                    self._where,
                    key,
                    exc,
                )
        return False

    def _tell(self, verifies: bool) -> None:
        if verifies == self._said:
            return
        self._said = verifies
        if verifies:
            log.info(
                "%s verifies the SHA-256 sent with each upload: uploads skip the MD5 ETag check",
                self._where,
            )
        else:
            log.warning(
                "%s stored bytes that did not match the SHA-256 sent with them (the checksum "
                "probe): every upload is verified by its MD5 ETag, ~1.5 ms of CPU per MiB",
                self._where,
            )
