"""Restore spool, the consumer's side: serve a prefetched WAL segment (the hit path).

PostgreSQL runs ``restore_command`` once per segment, serially, so each call
pays for a Python start-up and, on a direct fetch, for importing boto3 and a
round trip to S3. As WAL-G and pgBackRest do, ``walbackup fetch`` therefore
keeps a spool per timeline:

- a *hit* (``try_serve``) verifies the spooled segment and moves it to DEST,
  importing nothing but the standard library, ``tasks.fsutil`` and
  ``tasks.restore.formats`` (``tests/unit/test_restore_fast_path.py`` checks);
- a *miss* fetches the segment directly (``tasks.restore.fetch``), records it as
  the consumer's position (``note_want``: the ``.want`` file) and starts,
  unless one runs, a detached prefetcher (``tasks.restore.prefetch``) that
  downloads the next ``restore_prefetch`` segments into the spool; a fetch
  whose segment the prefetcher is downloading waits for it.

Layout: ``DATA_DIR/spool/REMOTE_ID/TENANT/TIMELINE/`` where ``REMOTE_ID`` names
the remote storage URL and endpoint (``remote_id``), so a spool never serves
what another remote stored. A spooled segment is published by an atomic
rename as ``NAME.SIZE.CRC32`` only once complete, fsynced and exactly
``wal_seg_size`` bytes; a hit re-checks size and CRC-32 before serving it, so a
partial, truncated or corrupt file is deleted, never served. Served files
leave the spool (they are moved). A file older than ``MAX_AGE_S`` is not
served. Files named ``TMP_PREFIX...`` are the prefetcher's, in progress.
"""

from __future__ import annotations

# Runs once per segment: standard library only, plus two stdlib-only modules
# of ours. The direct fetch (pydantic settings, boto3) happens elsewhere.
import contextlib
import errno
import fcntl
import os
import re
import time
import zlib
from typing import TYPE_CHECKING

from tasks.fsutil import atomic_write, fsync_dir
from tasks.restore.formats import CHUNK_BYTES, SEGMENT_RE, TTID_RE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import BinaryIO

    from tasks.config import Settings

SPOOL_DIRNAME = "spool"
LOCK_NAME = ".prefetch.lock"
"""Held (``flock``) by the spool's prefetcher for its lifetime."""
WANT_NAME = ".want"
"""``SEGMENT SEG_SIZE``: the segment the consumer last fetched directly."""
TMP_PREFIX = ".tmp."
"""Files in progress; the prefetcher deletes them by this prefix."""
DOWNLOAD_PREFIX = f"{TMP_PREFIX}dl."
"""``DOWNLOAD_PREFIX + NAME + ".…"``: the prefetcher is downloading ``NAME``."""
MAX_AGE_S = 600.0
"""A spooled file older than this is deleted instead of served."""
IN_FLIGHT_WAIT_S = 30.0
"""How long a fetch waits for the prefetcher's download of its segment."""

SPOOLED_RE = re.compile(rf"({SEGMENT_RE.pattern})\.([0-9]+)\.([0-9a-f]{{8}})")
"""A published spool file: ``NAME.SIZE.CRC32`` (decimal size, CRC-32 in hex)."""


def spooled_name(segment: str, size: int, crc: int) -> str:
    """The name a complete, verified download of ``segment`` is published under."""
    return f"{segment}.{size}.{crc:08x}"


# -- where the spool is --------------------------------------------------------


def remote_id(remote_storage: str, s3_endpoint_url: str | None) -> str:
    """Names the remote a spool holds segments of: the URL and endpoint,
    percent-encoded into one path component (distinct remotes, distinct
    names), or their SHA-256 when that would be too long."""
    text = f"{remote_storage} {s3_endpoint_url}" if s3_endpoint_url else remote_storage
    quoted = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else _pct(c) for c in text)
    if len(quoted) <= 200:
        return quoted
    import hashlib

    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()


def _pct(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode())


def _spool_path(data_dir: str, remote_storage: str, s3_endpoint_url: str | None, ttid: str) -> str:
    return os.path.join(data_dir, SPOOL_DIRNAME, remote_id(remote_storage, s3_endpoint_url), ttid)


def settings_spool_dir(settings: Settings, ttid: str) -> Path:
    """The spool of ``ttid`` for these settings."""
    from pathlib import Path

    return Path(
        _spool_path(
            str(settings.data_dir),
            settings.effective_remote_storage,
            settings.s3_endpoint_url,
            ttid,
        )
    )


def _fast_config() -> tuple[str, str, str | None] | None:
    """``(data_dir, remote_storage, s3_endpoint_url)`` as ``tasks.config``
    resolves them (environment over TOML file over defaults), without
    importing pydantic. ``None`` when unsure: the caller takes the slow path,
    which validates properly. A disagreement can only cause a miss: the spool
    directory is named after the remote."""
    file_values: dict[str, object] = {}
    config_file = os.environ.get("WALBACKUP_CONFIG_FILE")
    if config_file:
        try:
            import tomllib

            with open(config_file, "rb") as f:
                file_values = tomllib.load(f)
        except (OSError, ValueError):
            return None

    def value(name: str) -> str | None:
        env = os.environ.get(f"WALBACKUP_{name.upper()}")
        if env is not None:
            return env
        found = file_values.get(name)
        return found if isinstance(found, str) else None

    data_dir = value("data_dir")
    if data_dir is None:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "share"
        )
        data_dir = os.path.join(base, "walbackup")
    remote = value("remote_storage")
    if not remote:
        from pathlib import Path  # only for the default file:// remote

        remote = (Path(data_dir) / "remote").resolve().as_uri()
    return data_dir, remote, value("s3_endpoint_url")


# -- serving -------------------------------------------------------------------


def try_serve(ttid: str, segment: str, dest: str) -> bool:
    """Move a verified spooled ``segment`` of ``ttid`` to ``dest``; False on a
    miss (nothing spooled, or nothing fit to serve). Never raises for the
    spool's sake: any trouble is a miss and the caller fetches directly."""
    if TTID_RE.fullmatch(ttid) is None or SEGMENT_RE.fullmatch(segment) is None:
        return False
    config = _fast_config()
    if config is None:
        return False
    spool = _spool_path(*config, ttid)
    prefix, downloading = segment + ".", f"{DOWNLOAD_PREFIX}{segment}."
    deadline = time.monotonic() + IN_FLIGHT_WAIT_S
    while True:
        try:
            names = os.listdir(spool)
        except OSError:
            return False
        for name in names:
            if name.startswith(prefix):
                try:
                    if _serve(os.path.join(spool, name), dest):
                        return True
                except OSError:
                    continue
        # Being downloaded by a live prefetcher: waiting beats fetching again.
        if (
            not any(name.startswith(downloading) for name in names)
            or time.monotonic() > deadline
            or not prefetcher_running(spool)
        ):
            return False
        time.sleep(0.005)


def _serve(path: str, dest: str) -> bool:
    """Move the spool file ``path`` to ``dest`` if its size, age and CRC-32
    are right (else delete it); the move is durable once this returns."""
    match = SPOOLED_RE.fullmatch(os.path.basename(path))
    if match is None:
        return False
    size, crc = int(match.group(2)), int(match.group(3), 16)
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if st.st_size != size or time.time() - st.st_mtime > MAX_AGE_S:
            _unlink(path)
            return False
        if _crc32(f) != crc:
            _unlink(path)
            return False
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # the spool is on another file system
                raise
            f.seek(0)
            with atomic_write(dest) as out:  # fsyncs DEST's directory too
                while chunk := f.read(CHUNK_BYTES):
                    out.write(chunk)
            _unlink(path)
            return True
    fsync_dir(os.path.dirname(dest) or ".")
    return True


def _crc32(f: BinaryIO) -> int:
    """CRC-32 of what is left in ``f``, read into one reused buffer."""
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    crc = 0
    while n := f.readinto(buf):  # type: ignore[attr-defined]
        crc = zlib.crc32(view[:n], crc)
    return crc


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- what the prefetcher and the consumer tell each other ------------------------


def note_want(spool: Path, segment: str, seg_size: int) -> None:
    """Record that the consumer fetched ``segment`` directly: the prefetcher
    (re)starts right after it."""
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{TMP_PREFIX}want.{os.getpid()}.{time.monotonic_ns()}"
    # Not durable: after a crash the next miss writes it again.
    with atomic_write(spool / WANT_NAME, tmp=tmp, durable=False) as out:
        out.write(f"{segment} {seg_size}\n".encode())


def read_want(spool: Path) -> tuple[str, int, float] | None:
    """``(segment, seg_size, mtime_ns)`` of the last ``note_want``, if any."""
    path = spool / WANT_NAME
    try:
        mtime = path.stat().st_mtime_ns
        name, size = path.read_text().split()
        return name, int(size), float(mtime)
    except (OSError, ValueError):
        return None


def prefetcher_running(spool: str | Path) -> bool:
    """Whether a live prefetcher holds the spool's lock."""
    try:
        fd = os.open(os.path.join(spool, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we took it
    return False


@contextlib.contextmanager
def prefetch_lock(spool: Path) -> Iterator[bool]:
    """The spool's prefetcher lock, held for the block; False if another
    prefetcher holds it. A few tries: ``prefetcher_running`` takes it for a
    moment to look."""
    spool.mkdir(parents=True, exist_ok=True)
    fd = os.open(spool / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    yield False
                    return
                time.sleep(0.005)
        yield True
    finally:
        os.close(fd)
