"""``digest_segment_file``: SHA-256, MD5 and size of a local segment, in one read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tasks.errors import SegmentFileError
from tasks.storage.base import CHUNK_BYTES, SegmentDigest, digest_segment_file


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 7])
def test_digest_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "seg"
    path.write_bytes(data)
    digest = digest_segment_file(path, size)
    assert digest == SegmentDigest(hashlib.sha256(data).digest(), hashlib.md5(data).digest(), size)
    assert digest.sha256_hex == hashlib.sha256(data).hexdigest()
    assert digest.md5_hex == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("delta", [-1, 1], ids=["short", "oversized"])
def test_wrong_size_is_refused(tmp_path: Path, delta: int) -> None:
    path = tmp_path / "seg"
    path.write_bytes(b"x" * (100 + delta))
    with pytest.raises(SegmentFileError, match=f"{100 + delta} bytes, expected 100"):
        digest_segment_file(path, 100)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SegmentFileError, match="cannot open"):
        digest_segment_file(tmp_path / "gone", 100)


def test_digest_is_immutable(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    path.write_bytes(b"abc")
    digest = digest_segment_file(path, 3)
    with pytest.raises(AttributeError):
        digest.size = 4  # type: ignore[misc]
