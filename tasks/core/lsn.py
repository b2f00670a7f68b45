"""Log sequence numbers: unsigned 64-bit WAL positions printed as ``%X/%X``."""

from __future__ import annotations

import re

from tasks.errors import InvalidInput

_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")

LSN_MAX = 2**64 - 1


class Lsn(int):
    """A WAL position. An ``int`` (so it sorts, hashes and serialises as one)
    that prints the way PostgreSQL does and refuses to leave ``[0, 2**64)``."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"LSN must be an integer, got {value!r}")
        if not 0 <= value <= LSN_MAX:
            raise InvalidInput(f"LSN {value} is outside the unsigned 64-bit range")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``HI/LO`` hexadecimal form, e.g. ``0/16B3748``."""
        match = _LSN_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidInput(f"malformed LSN {text!r}: expected %X/%X, e.g. 0/16B3748")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    @classmethod
    def from_segment(cls, segno: int, offset: int, seg_size: int) -> Lsn:
        """PostgreSQL's ``XLogSegNoOffsetToRecPtr``."""
        return cls(segno * seg_size + offset)

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn({self})"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int(self).__format__(spec)

    def __add__(self, other: int) -> Lsn:
        return Lsn(int(self) + int(other))

    __radd__ = __add__

    def __sub__(self, other: int) -> Lsn:
        """Subtraction that refuses to go below zero (use ``checked_sub`` to test)."""
        result = self.checked_sub(other)
        if result is None:
            raise InvalidInput(f"LSN subtraction underflows: {self} - {int(other)}")
        return result

    def checked_sub(self, other: int) -> Lsn | None:
        """``self - other``, or ``None`` where that would be negative."""
        value = int(self) - int(other)
        return Lsn(value) if value >= 0 else None

    def saturating_sub(self, other: int) -> Lsn:
        """``self - other`` floored at 0."""
        return self.checked_sub(other) or Lsn(0)

    def segment_number(self, seg_size: int) -> int:
        return int(self) // seg_size
