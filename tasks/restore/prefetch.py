"""Restore spool, the producer's side: the forked prefetcher that fills a spool.

After a direct fetch (a spool miss), ``start_prefetcher`` forks a detached
``Prefetcher`` from that fetch, with boto3 already loaded. It follows the
consumer's position (the ``.want`` file, ``tasks.restore.spool.note_want``, and
the spooled files that disappear as they are served) and keeps the next
``depth`` segments downloaded into the spool: that is the spool's size cap.
Segments behind the consumer are deleted.

It holds ``flock`` on ``.prefetch.lock`` for its lifetime (so at most one runs
per spool, and a dead one holds nothing), stops scheduling at the first
segment the remote does not have, and exits — deleting whatever it left —
once everything it spooled was served after such an end, or when the consumer
has been idle for ``IDLE_EXIT_S``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import parse_xlog_file_name, validate_seg_size, xlog_file_name
from tasks.errors import ChecksumMismatch, NotFound
from tasks.restore.download import download_to_spool
from tasks.restore.hit import TMP_PREFIX, parse_spooled, prefetcher_running
from tasks.restore.ledger_check import LOOKAHEAD, LedgerCheck
from tasks.restore.spool import prefetch_lock, read_want, settings_spool_dir
from tasks.storage.base import RemoteStorage

IDLE_EXIT_S = 5.0
"""The prefetcher exits after this long without a segment served or asked for."""
POLL_S = 0.01
MAX_DOWNLOADS = 4
"""Concurrent downloads of one prefetcher."""
RETRY_S = 1.0
"""A download that failed for storage trouble is tried again after this long."""


def start_prefetcher(
    spool: Path, ttid: str, depth: int, storage: RemoteStorage, checked: bool = True
) -> bool:
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
        code = Prefetcher(storage, ttid, spool, depth, checked=checked).run()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


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
        checked: bool = True,
    ) -> None:
        """``checked``: against the archive ledger (``restore_ledger_check``
        not ``off``), strictly: a segment it cannot check is left to the
        consumer's own fetch, which says why."""
        self.storage = storage
        self.ttid = TenantTimelineId.parse(ttid)
        self.spool = spool
        self.depth = depth
        self.idle_exit_s = idle_exit_s
        self.checked = checked
        self.spooled: dict[int, Path] = {}
        self.tli = 1
        self.seg_size = 0
        self.progress = -1  # segno the consumer last took or fetched
        self.next_fetch = 0
        self.end_at: int | None = None  # first segno the remote lacks
        self.todo: deque[int] = deque()  # failed downloads to try again
        self.retry_at = 0.0
        self._check: LedgerCheck | None = None  # shared by the downloads: its page cache

    def run(self) -> int:
        with prefetch_lock(self.spool) as mine:
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
            if not entry.is_file(follow_symlinks=False):
                continue  # not ours (a directory under a spooled name ended the prefetcher)
            if entry.name.startswith(TMP_PREFIX):
                if everything:
                    Path(entry.path).unlink(missing_ok=True)
                continue
            spooled = parse_spooled(entry.name)
            if spooled is not None and (everything or self._behind(spooled[0])):
                Path(entry.path).unlink(missing_ok=True)
        if everything:
            self.spooled.clear()

    def _behind(self, name: str) -> bool:
        """A spooled name not after the consumer's position, or of another
        timeline or segment size: the consumer will not ask for it."""
        try:
            tli, segno = parse_xlog_file_name(name, self.seg_size)
        except ValueError:
            return True
        return tli != self.tli or segno <= self.progress

    def _retarget(self, want: tuple[str, int, float]) -> bool:
        name, seg_size, _ = want
        try:
            validate_seg_size(seg_size)
            tli, segno = parse_xlog_file_name(name, seg_size)
        except ValueError:
            return False
        restart = (tli, seg_size) != (self.tli, self.seg_size) or segno < self.progress
        self.tli, self.seg_size = tli, seg_size
        if self._check is None or self._check.seg_size != seg_size:
            self._check = self._ledger(seg_size)
        self.progress = segno
        self.next_fetch = segno + 1 if restart else max(self.next_fetch, segno + 1)
        self.end_at = None
        self.todo.clear()
        self.spooled = {s: p for s, p in self.spooled.items() if not restart and s > segno}
        self._clean(everything=False)
        return True

    def _loop(self) -> None:
        seen_want: float | None = None
        active = time.monotonic()
        downloads: dict[Future[Path], tuple[int, int, int]] = {}
        with ThreadPoolExecutor(max_workers=min(self.depth, MAX_DOWNLOADS)) as pool:
            try:
                while True:
                    now = time.monotonic()
                    want = read_want(self.spool)
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
                            self.spooled.pop(s).unlink(missing_ok=True)
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
        segno, tli, seg_size = target
        if (tli, seg_size) != (self.tli, self.seg_size):
            with contextlib.suppress(Exception):
                fut.result().unlink(missing_ok=True)
            return
        try:
            path = fut.result()
        except (NotFound, ChecksumMismatch):
            # Not archived, or not what was (the consumer's own fetch then
            # fails, exit 202): nothing to prefetch from here on.
            self.end_at = segno if self.end_at is None else min(self.end_at, segno)
            return
        except Exception:  # storage trouble: try again a little later
            self.todo.append(segno)
            self.retry_at = time.monotonic() + RETRY_S
            return
        if segno <= self.progress:
            path.unlink(missing_ok=True)  # the consumer got it elsewhere meanwhile
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

    def _ledger(self, seg_size: int) -> LedgerCheck | None:
        if not self.checked:
            return None
        return LedgerCheck(self.storage, self.ttid, seg_size, lookahead=LOOKAHEAD, strict=True)

    def _download(self, segno: int, tli: int, seg_size: int) -> Path:
        check = self._check
        if check is not None and check.seg_size != seg_size:
            check = self._ledger(seg_size)  # retargeted since: _finished drops it
        name = xlog_file_name(segno, seg_size, tli)
        return download_to_spool(self.storage, self.ttid, self.spool, name, seg_size, check)


def main(argv: list[str]) -> int:
    """``python -m tasks.restore.prefetch TTID DEPTH``: run a prefetcher in the
    foreground (``walbackup fetch`` forks one instead; this is for debugging)."""
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
