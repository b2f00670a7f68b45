"""The remote storage interface: one contract, two backends (``s3.py``, ``local.py``).

Keys passed to a backend are relative to its root (``TENANT/TIMELINE/SEGMENT``);
the backend adds its own prefix. Every backend must pass
``tests/integration/test_storage_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tasks.core.ids import TenantTimelineId


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the backend root
    size: int


@dataclass(frozen=True, slots=True)
class UploadResult:
    key: str
    size: int
    sha256_hex: str
    already_present: bool  # the same bytes were there before us (412 resolved)


def segment_key(ttid: TenantTimelineId, segment_name: str) -> str:
    """``TENANT/TIMELINE/SEGMENT``: the segment's path relative to WORKDIR."""
    return f"{ttid.tenant_id}/{ttid.timeline_id}/{segment_name}"


def timeline_prefix(ttid: TenantTimelineId) -> str:
    return f"{ttid.tenant_id}/{ttid.timeline_id}/"


class RemoteStorage(ABC):
    """Object storage holding the WAL of many timelines."""

    url: str  # printable form, never with credentials

    @abstractmethod
    def upload_file(self, key: str, path: Path, expected_size: int) -> UploadResult:
        """Stream ``path`` to ``key`` with a SHA-256 checksum, never overwriting
        different bytes: an existing object with the same bytes is success
        (``already_present``), different bytes raise ``ChecksumMismatch``.
        A file whose size is not ``expected_size`` raises ``SegmentFileError``
        and nothing is written."""

    @abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """A stream of the object's bytes from ``offset`` on (``read_object``).
        Raises ``NotFound`` when there is no such object. Caller closes it."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
