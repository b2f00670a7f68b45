"""A ``file://`` archive on a full file system (found by a drill): the
storage's probe, which the prober runs to learn when a failing storage
heals, made an empty file, which a full file system still allows. So the
prober called the full archive healthy, released the waiting retries to fail
again, and never saw the moment space came back: backup resumed 3.9-4.7 s
after it (0.2 s after a read-only archive became writable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import StorageUnavailable
from tasks.storage.local import TEMP_PREFIX, LocalStorage
from tests.tmpfs import fill, tiny_filesystem

pytestmark = pytest.mark.integration


def test_a_full_archive_probes_unusable_until_space_is_freed(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "archive", 4) as root:
        storage = LocalStorage(root)
        storage.probe()
        filler = fill(root)
        with pytest.raises(StorageUnavailable, match="is not usable"):
            storage.probe()
        assert not [p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
        filler.unlink()
        storage.probe()
