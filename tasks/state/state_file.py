"""The per-timeline state file ``walbackup.state``: its format, read and write (SPEC §3).

JSON with a magic string, a version, ``wal_seg_size``, ``backup_lsn`` and the
optional ``timeline_start_lsn`` / ``commit_lsn`` (``%X/%X``),
``partial_uploads`` (remote partial objects this node started uploading and
has not garbage-collected, ``tasks.core.partials``), ``removal_horizon_lsn``
(``tasks.backup.removal``) and ``system_id`` (the PostgreSQL system identifier
the timeline's WAL carries, as Redis recorded it first), sealed by the SHA-256
of the rest. Optional fields are added without a version bump: one is written
only when set, a reader takes the fields it knows (the seal covers them all),
and a missing one reads as unset. A directory written by ``pg_receivewal -D``
has no state file and works as is, with the configured ``wal_seg_size``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.lsn import Lsn
from tasks.core.segments import validate_seg_size
from tasks.errors import InvalidInput
from tasks.fsutil import write_atomically

STATE_FILE_NAME = "walbackup.state"
STATE_MAGIC = "walbackup-timeline-state"
STATE_VERSION = 1

_LSN_ZERO = Lsn(0)


@dataclass(frozen=True, slots=True)
class TimelineStateFile:
    """The contents of ``walbackup.state``."""

    wal_seg_size: int
    backup_lsn: Lsn = _LSN_ZERO
    timeline_start_lsn: Lsn | None = None
    commit_lsn: Lsn | None = None
    partial_uploads: tuple[str, ...] = ()
    removal_horizon_lsn: Lsn | None = None
    """Local WAL removal (``tasks.backup.removal``): complete segments below
    are deleted or being deleted; recorded before the deleting starts."""
    system_id: int | None = None
    """The timeline's system identifier (``tasks.backup.walheader``): kept
    here so that Redis, losing its data, learns it back from the nodes."""

    def __post_init__(self) -> None:
        validate_seg_size(self.wal_seg_size)

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "magic": STATE_MAGIC,
            "version": STATE_VERSION,
            "wal_seg_size": self.wal_seg_size,
            "backup_lsn": str(self.backup_lsn),
        }
        if self.timeline_start_lsn is not None:
            body["timeline_start_lsn"] = str(self.timeline_start_lsn)
        if self.commit_lsn is not None:
            body["commit_lsn"] = str(self.commit_lsn)
        if self.partial_uploads:
            body["partial_uploads"] = list(self.partial_uploads)
        if self.removal_horizon_lsn is not None:
            body["removal_horizon_lsn"] = str(self.removal_horizon_lsn)
        if self.system_id is not None:
            body["system_id"] = self.system_id
        body["sha256"] = _body_digest(body)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> TimelineStateFile:
        """Parse and verify a state file; ``path`` is only for error messages."""

        def bad(reason: str) -> InvalidInput:
            return InvalidInput(f"timeline state file {path}: {reason}")

        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise bad("not a JSON object")
        if body.get("magic") != STATE_MAGIC:
            raise bad(f"magic is {body.get('magic')!r}, expected {STATE_MAGIC!r}")
        if body.get("version") != STATE_VERSION:
            raise bad(f"unsupported version {body.get('version')!r}, expected {STATE_VERSION}")
        digest = body.pop("sha256", None)
        if digest != _body_digest(body):
            raise bad("checksum mismatch: the file is corrupt")
        try:
            return cls(
                wal_seg_size=body["wal_seg_size"],
                backup_lsn=Lsn.parse(body["backup_lsn"]),
                timeline_start_lsn=_optional_lsn(body.get("timeline_start_lsn")),
                commit_lsn=_optional_lsn(body.get("commit_lsn")),
                partial_uploads=_names(body.get("partial_uploads", [])),
                removal_horizon_lsn=_optional_lsn(body.get("removal_horizon_lsn")),
                system_id=_optional_u64(body.get("system_id")),
            )
        except KeyError as exc:
            raise bad(f"missing field {exc}") from None
        except InvalidInput as exc:
            raise bad(str(exc)) from None


def _body_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _optional_lsn(value: object) -> Lsn | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"malformed LSN {value!r}: expected %X/%X")
    return Lsn.parse(value)


def _optional_u64(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise InvalidInput(f"system_id {value!r}: expected an unsigned 64-bit integer")
    return value


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"partial_uploads {value!r}: expected a list of names")
    return tuple(value)


def read_state_file(path: Path) -> TimelineStateFile | None:
    """The state file at ``path``, ``None`` if there is none; raises
    ``InvalidInput`` naming the path if it is corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return TimelineStateFile.from_bytes(data, path)


def write_state_file(path: Path, state: TimelineStateFile) -> None:
    """Replace the state file atomically and durably."""
    write_atomically(path, state.to_bytes())
