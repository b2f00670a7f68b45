"""tasks.archive.etag_evidence: an ETag that is not the ledger's MD5 is judged
by the object's bytes, read back from a real ``file://`` storage; the ETags
themselves are inputs here (a file:// listing has none)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from tasks.archive.etag_evidence import EtagEvidence
from tasks.core.archive_check import Kind, Problem
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.segments import xlog_file_name
from tasks.storage.base import segment_key
from tasks.storage.local import LocalStorage

SEG = 1 << 20


def test_one_odd_etag_never_blinds_the_check_for_the_others(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "remote")
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    entries = {}
    for segno in (2, 5):
        data = bytes([segno]) * SEG
        storage.put_bytes(segment_key(ttid, xlog_file_name(segno, SEG)), data)
        entries[segno] = LedgerEntry(SEG, hashlib.sha256(data).hexdigest(), "d" * 32)
    paid: list[int] = []

    def take(n: int) -> bool:
        paid.append(n)
        return len(paid) <= 1  # the deep budget pays for one read-back

    evidence = EtagEvidence(storage, take)

    def changed(segno: int) -> Problem:
        return Problem(segno, xlog_file_name(segno, SEG), Kind.CHANGED, "ETag differs")

    # Segment 2 is intact under a single-part ETag that is no MD5 of it.
    assert evidence.judge(ttid, changed(2), SEG, entries[2], "0" * 32) is None
    assert evidence.opaque and paid == []  # read back at once: ETags were trusted until now
    # Remembered under that ETag: not read again, nothing paid.
    assert evidence.judge(ttid, changed(2), SEG, entries[2], "0" * 32) is None
    assert paid == []
    # Segment 5 rewritten: its new ETag is judged by its bytes, out of the budget.
    storage.put_bytes(segment_key(ttid, xlog_file_name(5, SEG)), b"\0" * SEG)
    found = evidence.judge(ttid, changed(5), SEG, entries[5], "e" * 32)
    assert found is not None and found.kind is Kind.CORRUPT and paid == [SEG]
    # The budget spent: not judged this pass (no problem claimed, none hidden for good).
    assert evidence.judge(ttid, changed(5), SEG, entries[5], "e" * 32) is None
    assert paid == [SEG, SEG]
