"""Storage keys and the file:// backend's own details (no servers needed)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.errors import AccessDenied, InvalidInput, StorageUnavailable
from tasks.storage.base import validate_key
from tasks.storage.local import STALE_TEMP_S, TEMP_PREFIX, LocalStorage, _scan

ROOT = Path("/srv/remote")


@given(st.text(alphabet=st.sampled_from("ab./\\\x00"), max_size=12))
def test_an_accepted_key_never_leaves_the_root(key: str) -> None:
    try:
        validate_key(key)
    except InvalidInput:
        return
    resolved = Path(os.path.normpath(ROOT / key))
    assert resolved.is_relative_to(ROOT) and resolved != ROOT


@pytest.mark.parametrize("prefix", ["", "a/", "a/b", "a/b/"])
def test_listing_prefixes_may_be_empty_or_end_in_a_slash(prefix: str) -> None:
    assert validate_key(prefix, prefix=True) == prefix


def test_temp_files_are_invisible_and_their_names_reserved(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / f"{TEMP_PREFIX}abc").write_bytes(b"half a segment")
    assert list(storage.list("")) == []
    assert storage.delete_prefix("t/") == 0
    with pytest.raises(InvalidInput, match="reserved"):
        storage.open_read(f"t/{TEMP_PREFIX}abc")


def test_a_listing_removes_the_temp_files_of_writes_killed_long_ago(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-write left its temporary file, up to a segment's
    size, for good: nothing listed or removed it."""
    storage = LocalStorage(tmp_path)
    storage.put_bytes("t/l/000000010000000000000001", b"segment")
    stale, fresh = (tmp_path / "t" / "l" / f"{TEMP_PREFIX}{n}" for n in ("old", "new"))
    for path in (stale, fresh):
        path.write_bytes(b"half a segment")
    then = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (then, then))
    assert [o.key for o in storage.list("t/")] == ["t/l/000000010000000000000001"]
    assert not stale.exists() and fresh.exists()  # a write may still be running
    assert f"removed {stale}" in caplog.text


def test_delete_prefix_prunes_emptied_directories_only(tmp_path: Path) -> None:
    root, source = tmp_path / "remote", tmp_path / "segment"
    storage = LocalStorage(root)
    for key in ("a/x/1", "a/x/2", "a/y/1"):
        source.write_bytes(key.encode())
        storage.upload_file(key, source, len(key))
    assert storage.delete_prefix("a/x/") == 2
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "a",
        "a/y",
        "a/y/1",
    ]


def test_relative_root_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not an absolute path"):
        LocalStorage(Path("relative"))


def test_an_object_deleted_while_listed_is_left_out_not_an_error(tmp_path: Path) -> None:
    """A listing racing a delete (superseded partials collected while
    ``restore_command`` looks for one) omits the deleted object, as S3 does."""
    prefix = tmp_path / "t"
    prefix.mkdir()
    for name in ("a", "b", "c"):
        (prefix / name).write_bytes(b"x")
    listing = _scan(prefix, tmp_path)
    first = next(listing)  # the directory has been read
    gone = next(n for n in ("a", "b", "c") if f"t/{n}" != first.key)
    (prefix / gone).unlink()
    rest = list(listing)
    assert f"t/{gone}" not in {o.key for o in rest}
    assert len(rest) == 1


def test_an_unreadable_object_or_directory_is_the_storage_refusing_not_a_crash(
    tmp_path: Path,
) -> None:
    """Errors as S3 gives them, so ``walbackup fetch`` exits 201 ("storage
    refusing us or unusable"), not 203: a permission refused is AccessDenied
    (the tests run as root, where no mode refuses: the errno is the input),
    any other failure to open or list is StorageUnavailable."""
    storage = LocalStorage(tmp_path / "archive")
    loop = tmp_path / "archive" / "t" / "loop"
    loop.parent.mkdir(parents=True)
    loop.symlink_to(loop)  # opening it fails with ELOOP
    with pytest.raises(StorageUnavailable, match="cannot read t/loop"):
        storage.open_read("t/loop")
    denied = storage._refused("list 't/'", PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(denied, AccessDenied) and "cannot list 't/'" in str(denied)
