"""The scrubber's judgement of ETag evidence, across its passes.

A listed ETag that is not the MD5 the ledger recorded (or a multipart one,
which no upload of walbackup's makes) is a ``CHANGED`` finding: evidence,
never grounds to delete and upload again. The object is read back and hashed
(``survey.confirm``) and its bytes decide. An object whose bytes matched is
remembered under that ETag, so later passes (the sweep comes back to it) do
not read it again, and a later rewrite, which changes the ETag, is judged
afresh: one odd object never turns the ETag check off for the rest.

Where an object shows the storage's ETags are no MD5s at all (SSE-KMS, some
S3-compatible stores: a single-part ETag that differs over the right bytes),
every object may be such a finding; from then on their read-backs come out
of the deep check's byte budget, and one it cannot pay for now waits for a
later pass (or the deep cursor).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from tasks.archive.survey import confirm
from tasks.core.archive_check import Problem
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.storage.base import RemoteStorage

log = logging.getLogger("walbackup.scrub")

REMEMBERED = 100_000
"""Objects remembered as intact under an ETag that is no MD5 of them."""


class EtagEvidence:
    """Thread-safe enough for the keeper's one thread (its only user)."""

    def __init__(self, storage: RemoteStorage, take: Callable[[int], bool]) -> None:
        self.storage = storage
        self.take = take
        """The deep check's budget: bytes a read-back may cost, once ETags proved opaque."""
        self.opaque = False
        """An object's bytes proved a single-part ETag no MD5 of them."""
        self._intact: OrderedDict[tuple[str, str, str | None], None] = OrderedDict()

    def judge(
        self,
        ttid: TenantTimelineId,
        problem: Problem,
        seg_size: int,
        entry: LedgerEntry,
        etag: str | None,
    ) -> Problem | None:
        """The problem the bytes show (``CORRUPT``, ``MISSING``), or ``None``:
        intact, or not judged this pass (no budget)."""
        ref = (str(ttid), problem.name, etag)
        if ref in self._intact:
            self._intact.move_to_end(ref)
            return None
        if self.opaque and not self.take(seg_size):
            return None
        found, not_md5 = confirm(self.storage, ttid, problem, seg_size, entry, etag)
        if found is None:
            self._intact[ref] = None
            if len(self._intact) > REMEMBERED:
                self._intact.popitem(last=False)
        if not_md5 and not self.opaque:
            self.opaque = True
            log.warning(
                "%s: %s holds the archived bytes under ETag %s, no MD5 of them: an ETag that "
                "differs is read back within the deep check's budget from now on",
                self.storage.url, problem.name, etag,
            )  # fmt: skip
        return found
