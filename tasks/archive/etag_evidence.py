"""The scrubber's judgement of ETag evidence, across its passes.

A listed ETag that is not the MD5 the ledger recorded (or a multipart one,
which no upload of walbackup's makes) is a ``CHANGED`` finding: evidence,
never grounds to delete and upload again. The object is read back and hashed
(``survey.confirm``) and its bytes decide. An object found intact is
remembered under that ETag, so later passes (the sweep comes back to it) do
not read it again, and a later rewrite, which changes the ETag, is judged
afresh: one odd object (put back by another tool) never turns the check off.

Once ``OPAQUE_PROOF`` objects hold the archived bytes under ETags that are
no MD5 of them, the storage's ETags say nothing (SSE-KMS, some S3-compatible
stores, an archive copied in multipart uploads): from then on the scrubber
compares sizes only, as it does where ``WALBACKUP_S3_SSE=aws:kms`` says so
beforehand, and the rolling deep check reads the bytes. That bounds what the
judging reads: a few objects, and each damaged one.
"""

from __future__ import annotations

import logging

from tasks.archive.survey import confirm
from tasks.core.archive_check import Problem
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.storage.base import RemoteStorage

log = logging.getLogger("walbackup.scrub")

OPAQUE_PROOF = 3
"""Intact objects under ETags that are no MD5s of them, before ETags say nothing."""


class EtagEvidence:
    """For one thread: the keeper's scrubber, or one ``walbackup verify``
    (``announce`` false: its note says what the scrubber logs)."""

    def __init__(self, storage: RemoteStorage, announce: bool = True) -> None:
        self.storage = storage
        self.announce = announce
        self.opaque = False
        """``OPAQUE_PROOF`` objects proved the ETags no MD5s: sizes only."""
        self.proved = 0
        """Objects found intact under an ETag that is no MD5 of them."""
        self._intact: set[tuple[str, str, str | None]] = set()
        """Objects found intact under such an ETag (fewer than ``OPAQUE_PROOF``)."""

    def judge(
        self,
        ttid: TenantTimelineId,
        problem: Problem,
        seg_size: int,
        entry: LedgerEntry,
        etag: str | None,
    ) -> Problem | None:
        """The problem the bytes show (``CORRUPT``, ``MISSING``), or ``None``:
        intact, or the storage's ETags say nothing (``opaque``)."""
        ref = (str(ttid), problem.name, etag)
        if self.opaque or ref in self._intact:
            return None
        assert problem.segno is not None
        found = confirm(self.storage, ttid, problem.segno, seg_size, entry)
        if found is not None:
            return found
        self._intact.add(ref)
        self.proved += 1
        if self.proved >= OPAQUE_PROOF:
            self.opaque = True
            self._intact.clear()
            if self.announce:
                log.warning(
                    "%s: %d objects hold the archived bytes under ETags that are no MD5s of "
                    "them (%s is one): the scrubber compares sizes only from now on, and its "
                    "deep check (WALBACKUP_SCRUB_DEEP_RATE) reads the bytes",
                    self.storage.url, OPAQUE_PROOF, problem.name,
                )  # fmt: skip
        return None
