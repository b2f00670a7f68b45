"""Restore spool: the next WAL segments, prefetched while PostgreSQL replays.

PostgreSQL runs ``restore_command`` once per segment, serially, so each call
pays for a Python start-up and, on a direct fetch, for importing boto3 and a
round trip to S3. As WAL-G and pgBackRest do, ``walbackup fetch`` therefore
keeps a spool per timeline:

- a *hit* (``try_serve``) verifies the spooled segment and moves it to DEST,
  importing nothing but the standard library;
- a *miss* fetches the segment directly (``tasks.restore.fetch``), records it as
  the consumer's position (the ``.want`` file) and starts, unless one runs, a
  detached *prefetcher* (forked from that fetch, with boto3 already loaded)
  that downloads the next ``restore_prefetch`` segments into the spool; a
  fetch whose segment the prefetcher is downloading waits for it.

Layout: ``DATA_DIR/spool/REMOTE_ID/TENANT/TIMELINE/`` where ``REMOTE_ID`` is a
digest of the remote storage URL and endpoint, so a spool never serves what
another remote stored. A spooled segment is published by an atomic rename as
``NAME.SIZE.CRC32`` only once complete, fsynced and exactly ``wal_seg_size``
bytes; a hit re-checks size and CRC-32 before serving it, so a partial,
truncated or corrupt file is deleted, never served. Served files leave the
spool (they are moved), segments behind the consumer are deleted, and the
prefetcher keeps at most ``restore_prefetch`` segments ahead: that is the
spool's size cap. A file older than ``MAX_AGE_S`` is not served.

The prefetcher holds ``flock`` on ``.prefetch.lock`` for its lifetime (so at
most one runs per spool, and a dead one holds nothing), stops scheduling at
the first segment the remote does not have, and exits — deleting whatever it
left — once everything it spooled was served after such an end, or when the
consumer has been idle for ``IDLE_EXIT_S``.
"""

from __future__ import annotations

# The consumer's side runs once per segment: standard library only, and only
# modules that load fast (no pathlib: it costs more than serving a segment's
# rename); the prefetcher imports the rest where it uses it.
import contextlib
import errno
import fcntl
import os
import re
import sys
import time
import zlib
from collections import deque

TYPE_CHECKING = False  # not typing's: importing typing costs a spool hit 3 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Future, ThreadPoolExecutor
    from pathlib import Path
    from typing import BinaryIO

    from tasks.config import Settings
    from tasks.storage.base import RemoteStorage

SPOOL_DIRNAME = "spool"
LOCK_NAME = ".prefetch.lock"
WANT_NAME = ".want"
TMP_PREFIX = ".tmp."
CHUNK_BYTES = 1 << 20
IDLE_EXIT_S = 5.0
"""The prefetcher exits after this long without a segment served or asked for."""
MAX_AGE_S = 600.0
"""A spooled file older than this is deleted instead of served."""
POLL_S = 0.01
MAX_DOWNLOADS = 4
"""Concurrent downloads of one prefetcher."""
RETRY_S = 1.0
IN_FLIGHT_WAIT_S = 30.0
"""How long a fetch waits for the prefetcher's download of its segment."""

_TTID_RE = re.compile(r"[0-9a-f]{32}/[0-9a-f]{32}")
_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
_SPOOLED_RE = re.compile(r"([0-9A-F]{24})\.([0-9]+)\.([0-9a-f]{8})")


# -- where the spool is --------------------------------------------------------


def remote_id(remote_storage: str, s3_endpoint_url: str | None) -> str:
    """Names the remote a spool holds segments of: the URL and endpoint,
    percent-encoded into one path component (distinct remotes, distinct
    names), or their SHA-256 when that would be too long."""
    text = f"{remote_storage} {s3_endpoint_url or ''}"
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


# -- the consumer's side -----------------------------------------------------------


def try_serve(ttid: str, segment: str, dest: str) -> bool:
    """Move a verified spooled ``segment`` of ``ttid`` to ``dest``; False on a
    miss (nothing spooled, or nothing fit to serve). Never raises for the
    spool's sake: any trouble is a miss and the caller fetches directly."""
    if _TTID_RE.fullmatch(ttid) is None or _SEGMENT_RE.fullmatch(segment) is None:
        return False
    config = _fast_config()
    if config is None:
        return False
    spool = _spool_path(*config, ttid)
    prefix, downloading = segment + ".", f"{TMP_PREFIX}dl.{segment}."
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
    match = _SPOOLED_RE.fullmatch(os.path.basename(path))
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
        directory = os.path.dirname(dest) or "."
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # the spool is on another file system
                raise
            _copy_into(f, dest, directory)
            _unlink(path)
    _fsync_dir(directory)
    return True


def _crc32(f: BinaryIO) -> int:
    """CRC-32 of what is left in ``f``, read into one reused buffer."""
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    crc = 0
    while n := f.readinto(buf):  # type: ignore[attr-defined]
        crc = zlib.crc32(view[:n], crc)
    return crc


def _copy_into(src: BinaryIO, dest: str, directory: str) -> None:
    """Copy the open file ``src`` to ``dest`` through a temp file and rename."""
    src.seek(0)
    tmp = os.path.join(directory, f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as out:
            while chunk := src.read(CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise


def note_want(spool: Path, segment: str, seg_size: int) -> None:
    """Record that the consumer fetched ``segment`` directly: the prefetcher
    (re)starts right after it."""
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{TMP_PREFIX}want.{os.getpid()}.{time.monotonic_ns()}"
    tmp.write_text(f"{segment} {seg_size}\n")
    os.replace(tmp, spool / WANT_NAME)


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


def start_prefetcher(spool: Path, ttid: str, depth: int, storage: RemoteStorage) -> bool:
    """Start a detached prefetcher for ``spool`` unless one runs; True if started.

    The caller just fetched a segment, so it has the storage client and its
    imports loaded: a forked child (detached by a double fork into its own
    session, standard streams on /dev/null) starts prefetching at once, where
    a new interpreter would spend most of a second importing boto3."""
    if depth <= 0 or prefetcher_running(spool):
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the middle process exits at once
        return True
    # Middle process, then the prefetcher: never return into the caller's code.
    code = 0
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        code = Prefetcher(storage, ttid, spool, depth).run()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


# -- the prefetcher --------------------------------------------------------------


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_want(spool: Path) -> tuple[str, int, float] | None:
    path = spool / WANT_NAME
    try:
        mtime = path.stat().st_mtime_ns
        name, size = path.read_text().split()
        return name, int(size), float(mtime)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive(spool: Path) -> Iterator[bool]:
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


class Prefetcher:
    """Keeps the ``depth`` segments after the consumer's position spooled."""

    def __init__(
        self,
        storage: RemoteStorage,
        ttid: str,
        spool: Path,
        depth: int,
        *,
        idle_exit_s: float = IDLE_EXIT_S,
    ) -> None:
        from tasks.core.ids import TenantTimelineId

        self.storage = storage
        self.ttid = TenantTimelineId.parse(ttid)
        self.spool = spool
        self.depth = depth
        self.idle_exit_s = idle_exit_s
        self.spooled: dict[int, Path] = {}
        self.tli = 1
        self.seg_size = 0
        self.progress = -1  # segno the consumer last took or fetched
        self.next_fetch = 0
        self.end_at: int | None = None  # first segno the remote lacks
        self.todo: deque[int] = deque()  # failed downloads to try again
        self.retry_at = 0.0

    def run(self) -> int:
        with _exclusive(self.spool) as mine:
            if not mine:
                return 0
            try:
                self._clean(everything=True)
                self._loop()
            finally:
                self._clean(everything=True)
        return 0

    def _clean(self, *, everything: bool) -> None:
        """Delete spooled segments the consumer is past, or, with
        ``everything``, all spooled segments and temp files (never ``.want``
        or the lock)."""
        for entry in os.scandir(self.spool):
            if entry.name.startswith(TMP_PREFIX):
                if everything:
                    _unlink(entry.path)
                continue
            match = _SPOOLED_RE.fullmatch(entry.name)
            if match is not None and (everything or self._behind(match.group(1))):
                _unlink(entry.path)
        if everything:
            self.spooled.clear()

    def _behind(self, name: str) -> bool:
        """A spooled name not after the consumer's position, or of another
        timeline or segment size: the consumer will not ask for it."""
        from tasks.core.segments import parse_xlog_file_name

        try:
            tli, segno = parse_xlog_file_name(name, self.seg_size)
        except ValueError:
            return True
        return tli != self.tli or segno <= self.progress

    def _retarget(self, want: tuple[str, int, float]) -> bool:
        from tasks.core.segments import parse_xlog_file_name, validate_seg_size

        name, seg_size, _ = want
        try:
            validate_seg_size(seg_size)
            tli, segno = parse_xlog_file_name(name, seg_size)
        except ValueError:
            return False
        restart = (tli, seg_size) != (self.tli, self.seg_size) or segno < self.progress
        self.tli, self.seg_size = tli, seg_size
        self.progress = segno
        self.next_fetch = segno + 1 if restart else max(self.next_fetch, segno + 1)
        self.end_at = None
        self.todo.clear()
        self.spooled = {s: p for s, p in self.spooled.items() if not restart and s > segno}
        self._clean(everything=False)
        return True

    def _loop(self) -> None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        seen_want: float | None = None
        active = time.monotonic()
        downloads: dict[Future[Path], tuple[int, int, int]] = {}
        with ThreadPoolExecutor(max_workers=min(self.depth, MAX_DOWNLOADS)) as pool:
            try:
                while True:
                    now = time.monotonic()
                    want = _read_want(self.spool)
                    if want is not None and want[2] != seen_want:
                        seen_want = want[2]
                        if self._retarget(want):
                            active = now
                    if self.seg_size == 0:
                        return  # nothing to follow
                    served = [s for s, p in self.spooled.items() if not p.exists()]
                    if served:
                        active = now
                        self.progress = max(self.progress, *served)
                        for s in served:
                            del self.spooled[s]
                        for s in [s for s in self.spooled if s <= self.progress]:
                            _unlink(self.spooled.pop(s))
                    for fut in [f for f in downloads if f.done()]:
                        self._finished(downloads.pop(fut), fut)
                    self._schedule(pool, downloads)
                    if (
                        self.end_at is not None
                        and not downloads
                        and not self.spooled
                        and not self.todo
                    ):
                        return  # the end of the archive, everything served
                    if now - active > self.idle_exit_s:
                        return
                    if downloads:
                        wait(downloads, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    else:
                        time.sleep(POLL_S)
            finally:
                for fut in downloads:
                    fut.cancel()

    def _finished(self, target: tuple[int, int, int], fut: Future[Path]) -> None:
        from tasks.errors import NotFound

        segno, tli, seg_size = target
        if (tli, seg_size) != (self.tli, self.seg_size):
            with contextlib.suppress(Exception):
                _unlink(fut.result())
            return
        try:
            path = fut.result()
        except NotFound:
            self.end_at = segno if self.end_at is None else min(self.end_at, segno)
            return
        except Exception:  # storage trouble: try again a little later
            self.todo.append(segno)
            self.retry_at = time.monotonic() + RETRY_S
            return
        if segno <= self.progress:
            _unlink(path)  # the consumer got it elsewhere meanwhile
        else:
            self.spooled[segno] = path

    def _schedule(
        self, pool: ThreadPoolExecutor, downloads: dict[Future[Path], tuple[int, int, int]]
    ) -> None:
        limit = min(self.depth, MAX_DOWNLOADS)
        ahead = self.progress + self.depth
        while len(downloads) < limit:
            if self.todo and time.monotonic() >= self.retry_at:
                segno = self.todo.popleft()
                if segno <= self.progress:
                    continue
            elif self.next_fetch <= ahead and (
                self.end_at is None or self.next_fetch < self.end_at
            ):
                segno = self.next_fetch
                self.next_fetch += 1
            else:
                return
            target = (segno, self.tli, self.seg_size)
            downloads[pool.submit(self._download, *target)] = target

    def _download(self, segno: int, tli: int, seg_size: int) -> Path:
        import uuid

        from tasks.core.segments import xlog_file_name
        from tasks.errors import SegmentFileError
        from tasks.storage.base import segment_key

        name = xlog_file_name(segno, seg_size, tli)
        tmp = self.spool / f"{TMP_PREFIX}dl.{name}.{uuid.uuid4().hex}"
        try:
            crc, size = 0, 0
            with (
                self.storage.open_read(segment_key(self.ttid, name)) as src,
                open(tmp, "xb") as out,
            ):
                while chunk := src.read(CHUNK_BYTES):
                    crc = zlib.crc32(chunk, crc)
                    out.write(chunk)
                    size += len(chunk)
                if size != seg_size:
                    raise SegmentFileError(
                        f"remote segment {name} has {size} bytes, expected {seg_size}"
                    )
                out.flush()
                os.fsync(out.fileno())
            final = self.spool / f"{name}.{size}.{crc:08x}"
            os.rename(tmp, final)
            return final
        except BaseException:
            _unlink(tmp)
            raise


def main(argv: list[str]) -> int:
    """``python -m tasks.restore.spool TTID DEPTH``: run a prefetcher in the foreground
    (``walbackup fetch`` forks one instead; this is for debugging)."""
    from tasks.config import load_settings
    from tasks.storage import open_storage

    ttid, depth = argv[0], int(argv[1])
    settings = load_settings()
    storage = open_storage(
        settings.effective_remote_storage,
        s3_endpoint_url=settings.s3_endpoint_url,
        parallel_jobs=MAX_DOWNLOADS,
    )
    try:
        return Prefetcher(storage, ttid, settings_spool_dir(settings, ttid), depth).run()
    finally:
        storage.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
