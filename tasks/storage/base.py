"""The remote storage interface: one contract, two backends (``s3.py``, ``local.py``).

Keys passed to a backend are relative to its root (``TENANT/TIMELINE/SEGMENT``);
the backend adds its own prefix. Every backend must pass
``tests/integration/test_storage_contract.py``.

Verification: an upload is described by a ``SegmentDigest`` (SHA-256, MD5 and
size of the local bytes, from one read pass, ``digest_segment_file``), either
passed in by the caller or computed by the backend. A backend reports success
only once it has checked, independently of anything the server echoes back,
that the stored object holds exactly those bytes; see each backend for how.
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tasks.core.ids import TenantTimelineId
from tasks.errors import ChecksumMismatch, InvalidInput, SegmentFileError

CHUNK_BYTES = 1 << 20
"""Read and copy size for streaming segments."""

DELETE_BATCH = 1000
"""Keys per delete request: S3's ``DeleteObjects`` takes at most 1,000."""

_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")

if TYPE_CHECKING:
    from _typeshed import SupportsRead


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the backend root
    size: int
    etag: str | None = None
    """S3's ETag without quotes (the MD5 of a single-part upload's bytes);
    ``None`` where the backend has none, or it is no MD5 (SSE-KMS)."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    key: str
    size: int
    sha256_hex: str
    md5_hex: str
    already_present: bool  # the same bytes were there before us (412 resolved)


@dataclass(frozen=True, slots=True)
class SegmentDigest:
    """What a segment's bytes hash to: the SHA-256 we archive and compare by,
    the MD5 a single-part S3 upload's ETag is (``b""`` when not computed), and
    the size."""

    sha256: bytes
    md5: bytes
    size: int

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def md5_hex(self) -> str:
        return self.md5.hex()

    def matches(self, other: SegmentDigest) -> bool:
        """The same bytes: SHA-256 and size equal, and the MD5s where both have one."""
        same_md5 = not self.md5 or not other.md5 or self.md5 == other.md5
        return self.sha256 == other.sha256 and self.size == other.size and same_md5


def segment_key(ttid: TenantTimelineId, segment_name: str) -> str:
    """``TENANT/TIMELINE/SEGMENT``: the segment's path relative to WORKDIR."""
    return f"{ttid.tenant_id}/{ttid.timeline_id}/{segment_name}"


def timeline_prefix(ttid: TenantTimelineId) -> str:
    return f"{ttid.tenant_id}/{ttid.timeline_id}/"


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Reject a key (or, with ``prefix``, a listing prefix, which may be empty or
    end in ``/``) that could escape a backend's root or that S3 and a file
    system would read differently: absolute, ``.``/``..``/empty components,
    backslashes, control characters."""
    what = "key prefix" if prefix else "key"
    if not isinstance(key, str):
        raise InvalidInput(f"invalid storage {what} {key!r}: not a string")
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts.pop()
    if key.startswith("/"):
        problem = "it is absolute"
    elif _BAD_KEY_CHARS.search(key):
        problem = "it contains a backslash or a control character"
    elif any(part in ("", ".", "..") for part in parts):
        problem = "it has an empty, '.' or '..' component"
    else:
        return key
    raise InvalidInput(f"invalid storage {what} {key!r}: {problem}")


def open_segment_file(
    path: Path, expected_size: int, digest: SegmentDigest | None = None
) -> BinaryIO:
    """Open a local segment for upload, refusing it before a byte is sent when
    its size is not ``expected_size``, or when ``digest`` (what the caller
    hashed, if anything) covers another size."""
    if digest is not None and digest.size != expected_size:
        raise SegmentFileError(
            f"segment file {path}: the digest given covers {digest.size} bytes, expected "
            f"{expected_size}: not uploaded"
        )
    try:
        stream = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except OSError as exc:
        raise SegmentFileError(f"segment file {path}: cannot open: {exc.strerror}") from exc
    size = os.fstat(stream.fileno()).st_size
    if size != expected_size:
        stream.close()
        raise SegmentFileError(
            f"segment file {path} is {size} bytes, expected {expected_size}: not uploaded"
        )
    return stream


def read_chunks(stream: SupportsRead[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


class Hasher:
    """SHA-256, MD5 (unless ``md5`` is false: ``b""``) and length of the bytes
    fed to it, in one pass."""

    def __init__(self, md5: bool = True) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        self.size += len(chunk)

    def digest(self) -> SegmentDigest:
        md5 = self._md5.digest() if self._md5 is not None else b""
        return SegmentDigest(self._sha256.digest(), md5, self.size)


def digest_stream(stream: SupportsRead[bytes], md5: bool = True) -> SegmentDigest:
    """SHA-256, MD5 and length of what is left in ``stream``, in one read pass."""
    hasher = Hasher(md5)
    for chunk in read_chunks(stream):
        hasher.update(chunk)
    return hasher.digest()


def digest_segment_file(path: Path, expected_size: int, md5: bool = True) -> SegmentDigest:
    """The digest of a local segment, read once. A file that is not
    ``expected_size`` bytes (before or while being read) raises
    ``SegmentFileError``, as ``open_segment_file`` does. ``md5``: also the
    MD5 (what S3's ETag is; ``RemoteStorage.needs_md5``)."""
    with open_segment_file(path, expected_size) as stream:
        digest = digest_stream(stream, md5)
    check_read_size(path, digest.size, expected_size)
    return digest


def changed_since_hashed(
    path: Path, digest: SegmentDigest, read: SegmentDigest
) -> SegmentFileError:
    return SegmentFileError(
        f"segment file {path} changed between being hashed and being stored (sha256 "
        f"{digest.sha256_hex} when hashed, {read.sha256_hex} now): not uploaded"
    )


def check_read_size(path: Path, read_bytes: int, expected_size: int) -> None:
    """The file changed size while we read it: refuse what we read."""
    if read_bytes != expected_size:
        raise SegmentFileError(
            f"segment file {path} changed while being read ({read_bytes} bytes read, "
            f"expected {expected_size}): not uploaded"
        )


def checksum_mismatch(
    url: str, key: str, ours_hex: str, theirs_hex: str, note: str = ""
) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"{url}: object {key} already exists with DIFFERENT bytes (stored sha256 "
        f"{theirs_hex}, ours {ours_hex}); not overwritten. Two nodes disagree about "
        f"this WAL segment: a split brain to investigate.{note}"
    )


class RemoteStorage(ABC):
    """Object storage holding the WAL of many timelines."""

    url: str  # printable form, never with credentials

    @property
    def needs_md5(self) -> bool:
        """Whether ``upload_file``'s ``digest`` should carry the MD5 (S3 checks
        the ETag against it unless the server verifies checksums; a backend
        without ETags skips that hashing). A digest without it is hashed again."""
        return True

    @property
    def lists_md5_etags(self) -> bool:
        """Whether listings' ``ObjectInfo.etag`` is the MD5 (the ledger's is compared)."""
        return False

    @abstractmethod
    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        """Stream ``path`` to ``key``, never overwriting different bytes: an
        existing object with the same bytes is success (``already_present``),
        different bytes raise ``ChecksumMismatch``.

        ``digest`` is what the caller hashed (``digest_segment_file``) and
        wants archived; without it the backend hashes the file itself. Success
        means the stored object was verified to hold exactly those bytes. A
        file whose size is not ``expected_size``, or whose bytes no longer
        match ``digest``, raises ``SegmentFileError``; bytes that reached the
        server corrupted raise ``UploadCorrupted`` (retryable). In both cases
        nothing is left stored under ``key`` by this call."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Store a small object (a ledger page) unless ``key`` exists: ``True``
        when this call created it, verified as ``upload_file`` verifies;
        ``False`` when an object was already there (the caller reads it and
        compares). Bytes that reached the server corrupted raise
        ``UploadCorrupted`` and leave nothing stored by this call."""

    def read_bytes(self, key: str) -> bytes:
        """A small object's whole content (``NotFound`` when there is none)."""
        with self.open_read(key) as stream:
            return stream.read()

    @abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """A stream of the object's bytes from ``offset`` on (``read_object``).
        Raises ``NotFound`` when there is no such object. Caller closes it."""

    @abstractmethod
    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order; with
        ``start_after``, only keys after that one (S3's ``StartAfter``); with
        ``limit``, at most that many (one small request on S3)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there. For small
        metadata objects (a marker), never WAL: no create-if-absent, no
        verification beyond the transfer's own checksum."""

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` in order, ``DELETE_BATCH`` per request; returns how
        many. Missing objects are not an error; a failure leaves the keys
        before it deleted."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``, in key order; returns how many."""
        return self.delete_many(info.key for info in self.list(prefix))

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; a missing object is not an error."""

    @abstractmethod
    def probe(self, write: bool = False) -> None:
        """A cheap health check of the storage, quick to fail (about a second
        against a black-holed endpoint): returns when it is usable, else raises
        ``StorageUnavailable``, ``BucketMissing`` or ``AccessDenied``. With
        ``write``, usable means that we may write too (writing nothing new)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
