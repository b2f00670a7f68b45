"""``file:///PATH``: a local directory as remote storage (the embedded default).

A write goes to a unique temp file beside the destination, is fsynced, and is
published with ``os.link``: unlike ``rename``, a link fails when the key
exists, so publishing is an atomic create-if-absent and concurrent writers of
one key can neither tear nor replace each other's file. (Hence not
``fsutil.atomic_write``, whose rename replaces; its ``fsync_dir`` makes each
link and new directory durable.)

Verification: the SHA-256 is computed over the bytes as they are copied into
the temp file; when the caller passed a digest they must equal it (else the
file changed since it was hashed: ``SegmentFileError``, nothing published).
An existing object is compared by hashing its bytes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tasks.errors import AccessDenied, InvalidInput, NotFound, StorageUnavailable
from tasks.fsutil import atomic_write, fsync_dir
from tasks.storage.base import (
    DELETE_BATCH,
    Hasher,
    ObjectInfo,
    RemoteStorage,
    SegmentDigest,
    UploadResult,
    changed_since_hashed,
    check_read_size,
    checksum_mismatch,
    digest_stream,
    open_segment_file,
    read_chunks,
    validate_key,
)

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp."
_PROBE_DATA = b"walbackup probe\n" * 4096  # 64 KiB: blocks a full file system has not


STALE_TEMP_S = 86400.0
"""A temporary file untouched this long is a killed write's: a listing removes
it. A day, not less: on a shared archive (NFS) the file's mtime is the
writer's clock and the listing's "now" another node's."""


def _scan(directory: Path, root: Path) -> Iterator[ObjectInfo]:
    """Every published object below ``directory``, in no particular order;
    stale temporary files met on the way are removed (``_sweep``)."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _scan(Path(entry.path), root)
        elif entry.name.startswith(TEMP_PREFIX):
            _sweep(entry)
        elif entry.is_file():
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # deleted since the directory was read: not listed, as on S3
            yield ObjectInfo(Path(entry.path).relative_to(root).as_posix(), size)


def _sweep(entry: os.DirEntry[str]) -> None:
    """Remove ``entry``, a temporary file, if no write has touched it for
    ``STALE_TEMP_S`` (a worker killed mid-write leaves one, up to a segment's
    size, that nothing else would ever remove). A write still running past
    that finds it gone at its rename, fails and is retried."""
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_TEMP_S:
            return
        os.unlink(entry.path)
    except OSError:  # gone already, or a read-only archive (a restore's): left
        return
    log.warning("removed %s, a write's temporary file untouched for a day", entry.path)


class LocalStorage(RemoteStorage):
    @property
    def needs_md5(self) -> bool:
        return False  # verified by the SHA-256 of the bytes copied

    def __init__(self, root: Path, *, create: bool = True) -> None:
        if not root.is_absolute():
            raise InvalidInput(f"storage directory {str(root)!r} is not an absolute path")
        if not create:
            if not root.is_dir():
                raise StorageUnavailable(f"{root.as_uri()}: {root} is not a directory")
        else:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidInput(
                    f"cannot create storage directory {root}: {exc.strerror}"
                ) from exc
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        validate_key(key)
        if any(part.startswith(TEMP_PREFIX) for part in key.split("/")):
            raise InvalidInput(
                f"invalid storage key {key!r}: names starting with {TEMP_PREFIX!r} are reserved"
            )
        return self.root / key

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        dest = self._path(key)
        with open_segment_file(path, expected_size, digest) as src:
            try:
                self._makedirs(dest.parent)
                tmp = dest.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
                try:
                    copied = self._write_temp(src, tmp, path, expected_size)
                    if digest is None:
                        digest = copied
                    elif copied.sha256 != digest.sha256:
                        raise changed_since_hashed(path, digest, copied)
                    created = self._publish(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageUnavailable(f"{self.url}: cannot store {key}: {exc}") from exc
        if not created:
            with open(dest, "rb") as existing:
                stored = digest_stream(existing, md5=False)
            if stored.sha256 != digest.sha256:
                raise checksum_mismatch(self.url, key, digest.sha256_hex, stored.sha256_hex)
        return UploadResult(
            key, expected_size, digest.sha256_hex, digest.md5_hex, already_present=not created
        )

    def _makedirs(self, directory: Path) -> None:
        """Create missing directories durably (each new entry's parent fsynced)."""
        if directory.is_dir():
            return
        self._makedirs(directory.parent)
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            directory.mkdir()
        fsync_dir(directory.parent)

    @staticmethod
    def _write_temp(src: BinaryIO, tmp: Path, path: Path, expected_size: int) -> SegmentDigest:
        """Copy ``src`` to ``tmp`` durably; the digest of the bytes copied."""
        hasher = Hasher(md5=False)
        with open(tmp, "xb") as out:
            for chunk in read_chunks(src):
                hasher.update(chunk)
                out.write(chunk)
            check_read_size(path, hasher.size, expected_size)
            out.flush()
            os.fsync(out.fileno())
        return hasher.digest()

    @staticmethod
    def _publish(tmp: Path, dest: Path) -> bool:
        """Link the complete temp file in as ``dest``; False if ``dest`` exists."""
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return False
        fsync_dir(dest.parent)
        return True

    def create_bytes(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        try:
            self._makedirs(dest.parent)
            tmp = dest.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                with open(tmp, "xb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                return self._publish(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"{self.url}: cannot store {key}: {exc}") from exc

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        path = self._path(key)
        if offset < 0:
            raise InvalidInput(f"invalid read offset {offset} for {key}: negative")
        try:
            stream = open(path, "rb")  # noqa: SIM115 - returned to the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"{self.url}: no object {key}") from exc
        except OSError as exc:
            raise self._refused(f"read {key}", exc) from exc
        size = os.fstat(stream.fileno()).st_size
        if offset > size:
            stream.close()
            raise InvalidInput(
                f"invalid read offset {offset} for {key}: the object has {size} bytes"
            )
        stream.seek(offset)
        return stream

    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_key(prefix, prefix=True)
        # Only the deepest directory the prefix names can hold matches.
        start = self.root / prefix.rpartition("/")[0]
        try:
            found = [
                info
                for info in _scan(start, self.root)
                if info.key.startswith(prefix) and info.key > start_after
            ]
        except OSError as exc:
            raise self._refused(f"list {prefix!r}", exc) from exc
        return iter(sorted(found, key=lambda info: info.key)[:limit])

    def delete(self, key: str) -> None:
        self._unlink(key, self._path(key))

    def _unlink(self, key: str, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # no such object (a directory is not one)
        except OSError as exc:
            raise StorageUnavailable(f"{self.url}: cannot delete {key}: {exc}") from exc
        self._prune_empty_dirs(path.parent)

    def probe(self, write: bool = False) -> None:
        """The root is a directory we can write a little data in (an empty
        file is made even on a full file system: the prober would call a full
        archive healthy, and the uploads it releases fail again), whether or
        not ``write`` is asked for."""
        probe = self.root / f"{TEMP_PREFIX}probe.{uuid.uuid4().hex}"
        try:
            try:
                with open(probe, "xb") as out:
                    out.write(_PROBE_DATA)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise AccessDenied(
                    f"{self.url}: cannot write to {self.root}: {exc.strerror}"
                ) from exc
            raise StorageUnavailable(
                f"{self.url}: {self.root} is not usable: {exc.strerror}"
            ) from exc

    def _refused(self, what: str, exc: OSError) -> AccessDenied | StorageUnavailable:
        """The error for a failed ``what``: a permission refused is
        ``AccessDenied`` (as S3's 403), anything else ``StorageUnavailable``."""
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"{self.url}: cannot {what}: {exc.strerror}")
        return StorageUnavailable(f"{self.url}: cannot {what}: {exc.strerror}")

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        try:
            self._makedirs(dest.parent)
            with atomic_write(dest, tmp=dest.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}") as out:
                out.write(data)
        except OSError as exc:
            raise StorageUnavailable(f"{self.url}: cannot store {key}: {exc}") from exc

    def delete_many(self, keys: Iterable[str]) -> int:
        deleted = 0
        pending = iter(keys)
        # Batches as S3's: every key of one is checked before any is deleted.
        while batch := [(k, self._path(k)) for k in itertools.islice(pending, DELETE_BATCH)]:
            for key, path in batch:
                self._unlink(key, path)
            deleted += len(batch)
        return deleted

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            directory = directory.parent
