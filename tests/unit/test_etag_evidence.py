"""tasks.archive.etag_evidence: an ETag that is not the ledger's MD5 is judged
by the object's bytes, read back from a real ``file://`` storage; the ETags
themselves are inputs here (a file:// listing has none)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import BinaryIO

from tasks.archive.etag_evidence import OPAQUE_PROOF, EtagEvidence
from tasks.core.archive_check import Kind, Problem
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.segments import xlog_file_name
from tasks.storage.base import segment_key
from tasks.storage.local import LocalStorage

SEG = 1 << 20


class CountingReads(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        self.reads += 1
        return super().open_read(key, offset)


def test_odd_etags_are_judged_by_bytes_until_they_prove_to_say_nothing(tmp_path: Path) -> None:
    storage = CountingReads(tmp_path / "remote")
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    entries = {}
    for segno in range(1, 8):
        data = bytes([segno]) * SEG
        storage.put_bytes(segment_key(ttid, xlog_file_name(segno, SEG)), data)
        entries[segno] = LedgerEntry(SEG, hashlib.sha256(data).hexdigest(), "d" * 32)
    evidence = EtagEvidence(storage)

    def judge(segno: int, etag: str) -> Problem | None:
        problem = Problem(segno, xlog_file_name(segno, SEG), Kind.CHANGED, "ETag differs")
        return evidence.judge(ttid, problem, SEG, entries[segno], etag)

    # One odd object: read back, intact, remembered under its ETag (not read again).
    assert judge(2, "0" * 32) is None and storage.reads == 1
    assert judge(2, "0" * 32) is None and storage.reads == 1
    # Another segment rewritten (a plain PUT: a fresh MD5 ETag): its bytes show it.
    storage.put_bytes(segment_key(ttid, xlog_file_name(5, SEG)), b"\0" * SEG)
    found = judge(5, "e" * 32)
    assert found is not None and found.kind is Kind.CORRUPT and not evidence.opaque
    # OPAQUE_PROOF intact objects under odd ETags: the ETags say nothing, no more reads.
    for segno in range(3, 3 + OPAQUE_PROOF - 1):
        assert judge(segno, "1" * 32) is None
    assert evidence.opaque
    reads = storage.reads
    assert judge(7, "2" * 32) is None and storage.reads == reads
