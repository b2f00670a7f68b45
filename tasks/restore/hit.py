"""The restore spool's hit path: serve a prefetched segment, importing almost nothing.

PostgreSQL starts ``restore_command`` once per segment, so a spool hit pays
for an interpreter start-up and for every module it imports: ``re``,
``typing`` and ``pathlib`` alone cost more here (~15 ms) than checking and
moving a 16 MiB segment does. So this module imports only ``os``, ``time``,
``zlib``, ``mmap``, ``fcntl`` and ``errno``, judges names with string methods
where the rest of the code uses patterns (``tests/unit/test_restore_fast_path.py``
checks both: the imports, and that the judgements equal the core's), and
holds what a hit needs of the spool's layout (``tasks.restore.spool`` tells
the whole of it). Settings read from ``WALBACKUP_CONFIG_FILE`` cost a hit
``tomllib`` (and with it ``re`` and ``typing``), and the default ``file://``
remote costs it ``pathlib``: the environment is the fast way to set them.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import time
import zlib

TYPE_CHECKING = False  # typing itself costs a hit ~5 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import BinaryIO

SPOOL_DIRNAME = "spool"
LOCK_NAME = ".prefetch.lock"
"""Held (``flock``) by the spool's prefetcher for its lifetime."""
TMP_PREFIX = ".tmp."
"""Files in progress; the prefetcher deletes them by this prefix."""
DOWNLOAD_PREFIX = f"{TMP_PREFIX}dl."
"""``DOWNLOAD_PREFIX + NAME + ".…"``: the prefetcher is downloading ``NAME``."""
MAX_AGE_S = 600.0
"""A spooled file older than this is deleted instead of served."""
IN_FLIGHT_WAIT_S = 30.0
"""How long a fetch waits for the prefetcher's download of its segment."""
DEFAULT_SEG_SIZE = 16 * 1024 * 1024
"""``Settings.wal_seg_size``'s default (a test keeps them equal)."""

_UPPER_HEX = frozenset("0123456789ABCDEF")
_LOWER_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")


def is_segment_name(name: str) -> bool:
    """A complete segment's file name (``tasks.core.segments.SEGMENT_NAME_RE``)."""
    return len(name) == 24 and _UPPER_HEX.issuperset(name)


def is_ttid(text: str) -> bool:
    """``TENANT/TIMELINE`` as ``tasks.core.ids.TenantTimelineId.parse`` accepts it."""
    tenant, slash, timeline = text.partition("/")
    return (
        slash == "/"
        and len(tenant) == len(timeline) == 32
        and _LOWER_HEX.issuperset(tenant)
        and _LOWER_HEX.issuperset(timeline)
    )


def spooled_name(segment: str, size: int, crc: int) -> str:
    """The name a complete, verified download of ``segment`` is published
    under: ``NAME.SIZE.CRC32`` (decimal size, CRC-32 in 8 hex digits)."""
    return f"{segment}.{size}.{crc:08x}"


def parse_spooled(name: str) -> tuple[str, int, int] | None:
    """``(segment, size, crc)`` of a published spool file's name, else ``None``."""
    segment, size, crc = name[:24], name[25:-9], name[-8:]
    if (
        is_segment_name(segment)
        and name[24:25] == name[-9:-8] == "."
        and size
        and _DIGITS.issuperset(size)
        and _LOWER_HEX.issuperset(crc)
    ):
        return segment, int(size), int(crc, 16)
    return None


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


def spool_path(data_dir: str, remote_storage: str, s3_endpoint_url: str | None, ttid: str) -> str:
    return os.path.join(data_dir, SPOOL_DIRNAME, remote_id(remote_storage, s3_endpoint_url), ttid)


def _fast_config() -> tuple[str, str, str | None, int] | None:
    """``(data_dir, remote_storage, s3_endpoint_url, wal_seg_size)`` as
    ``tasks.config`` resolves them (environment over TOML file over
    defaults), without importing pydantic. ``None`` when unsure: the caller
    takes the slow path, which validates properly. A disagreement can only
    cause a miss: the spool directory is named after the remote, and a
    spooled file of another size than the setting is not served (the slow
    path says what is wrong). The other settings are not checked here: the
    direct fetch that started the prefetcher validated them."""
    file_values: dict[str, object] = {}
    config_file = os.environ.get("WALBACKUP_CONFIG_FILE")
    if config_file:
        try:
            import tomllib

            with open(config_file, "rb") as f:
                file_values = tomllib.load(f)
        except (OSError, ValueError):
            return None

    def value(name: str) -> object:
        env = os.environ.get(f"WALBACKUP_{name.upper()}")
        return env if env is not None else file_values.get(name)

    def text(name: str) -> str | None:
        found = value(name)
        return found if isinstance(found, str) else None

    data_dir = text("data_dir")
    if data_dir is None:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "share"
        )
        data_dir = os.path.join(base, "walbackup")
    seg = value("wal_seg_size")
    if seg is None:
        seg_size = DEFAULT_SEG_SIZE
    elif type(seg) is int:  # from the TOML file
        seg_size = seg
    elif isinstance(seg, str) and seg and _DIGITS.issuperset(seg):
        seg_size = int(seg)
    else:
        return None
    remote = text("remote_storage")
    if not remote:
        from pathlib import Path  # only for the default file:// remote

        remote = (Path(data_dir) / "remote").resolve().as_uri()
    return data_dir, remote, text("s3_endpoint_url"), seg_size


# -- serving -------------------------------------------------------------------


def try_serve(ttid: str, segment: str, dest: str) -> bool:
    """Move a verified spooled ``segment`` of ``ttid`` to ``dest``; False on a
    miss (nothing spooled, or nothing fit to serve). Never raises for the
    spool's sake: any trouble is a miss and the caller fetches directly."""
    if not is_ttid(ttid) or not is_segment_name(segment):
        return False
    config = _fast_config()
    if config is None:
        return False
    data_dir, remote, endpoint, seg_size = config
    spool = spool_path(data_dir, remote, endpoint, ttid)
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
                    if _serve(spool, name, dest, seg_size):
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


def _serve(spool: str, name: str, dest: str, seg_size: int) -> bool:
    """Move the spool file ``name`` to ``dest`` if its size, age and CRC-32
    are right (else delete it); one of another size than ``seg_size`` is
    left alone (spooled under other settings: the slow path judges). The
    file was fsynced when it was spooled; the rename is not: PostgreSQL's
    ``durable_rename`` of a restored file fsyncs its directory, and a crash
    before that loses only the rename (PostgreSQL asks again). An fsync here
    waited behind the prefetcher's own (one journal): 33 – 40 ms a call
    instead of 44 – 47."""
    parsed = parse_spooled(name)
    if parsed is None:
        return False
    _, size, crc = parsed
    if size != seg_size:
        return False
    path = os.path.join(spool, name)
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if st.st_size != size or time.time() - st.st_mtime > MAX_AGE_S or _crc32(f) != crc:
            _unlink(path)
            return False
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # the spool is on another file system
                raise
            _copy_across(f, path, dest)
    return True


def _crc32(f: BinaryIO) -> int:
    """CRC-32 of the open file ``f``, read through a mapping: no copy of the
    bytes into Python (half the cost of reading 16 MiB here). A read error
    or a truncation while mapped kills the process with SIGBUS (exit status
    135 in a shell): above 125, so PostgreSQL stops recovery rather than
    ending it; nothing of ours truncates a spool file."""
    fd = f.fileno()
    if os.fstat(fd).st_size == 0:
        return zlib.crc32(b"")
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
        return zlib.crc32(view)


def _copy_across(f: BinaryIO, path: str, dest: str) -> None:
    """Serve ``path`` (open as ``f``) to ``dest`` on another file system:
    copied through a temp file beside ``dest``, then removed from the spool."""
    from tasks.fsutil import atomic_write
    from tasks.storage.base import CHUNK_BYTES

    f.seek(0)
    with atomic_write(dest) as out:  # fsyncs DEST's directory too
        while chunk := f.read(CHUNK_BYTES):
            out.write(chunk)
    _unlink(path)


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 - contextlib would cost the hit path its imports
        os.unlink(path)
    except FileNotFoundError:
        pass


def prefetcher_running(spool: str | os.PathLike[str]) -> bool:
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
