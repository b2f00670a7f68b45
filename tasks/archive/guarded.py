"""A node's storage, usable only while it is the cluster's archive (``tasks.archive.identity``).

Every call but ``close`` and ``probe`` (unless ``write``: S3 may store its
probe object) first asks ``ArchiveIdentity.require``, so no part of the node
(uploads, partial uploads, ledger pages, scrub passes, heals) reads or writes
a storage that is not the archive: a scrub pass over another bucket would
find it "intact" and let the nodes remove their WAL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tasks.archive.identity import ArchiveIdentity
from tasks.storage.base import ObjectInfo, RemoteStorage, SegmentDigest, UploadResult


class GuardedStorage(RemoteStorage):
    def __init__(self, inner: RemoteStorage, identity: ArchiveIdentity) -> None:
        self.inner = inner
        self.identity = identity
        self.url = inner.url

    @property
    def needs_md5(self) -> bool:
        return self.inner.needs_md5

    @property
    def lists_md5_etags(self) -> bool:
        return self.inner.lists_md5_etags

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        self.identity.require()
        return self.inner.upload_file(key, path, expected_size, digest)

    def create_bytes(self, key: str, data: bytes) -> bool:
        self.identity.require()
        return self.inner.create_bytes(key, data)

    def read_bytes(self, key: str) -> bytes:
        self.identity.require()
        return self.inner.read_bytes(key)

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        self.identity.require()
        return self.inner.open_read(key, offset)

    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        self.identity.require()
        return self.inner.list(prefix, start_after, limit)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.identity.require()
        self.inner.put_bytes(key, data)

    def delete_many(self, keys: Iterable[str]) -> int:
        self.identity.require()
        return self.inner.delete_many(keys)

    def delete(self, key: str) -> None:
        self.identity.require()
        self.inner.delete(key)

    def probe(self, write: bool = False) -> None:
        if write:
            self.identity.require()
        self.inner.probe(write)

    def close(self) -> None:
        self.inner.close()
