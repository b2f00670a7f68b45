"""Tenant and timeline ids: 32 lowercase hex characters each, ``TENANT/TIMELINE``.

Ids become directory names and object keys, so anything but the exact form is
rejected: no case folding, no trimming, no separators, no traversal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tasks.errors import InvalidInput

_HEX32 = re.compile(r"[0-9a-f]{32}")


def is_hex_id(value: object) -> bool:
    """Whether ``value`` is a tenant or timeline id: 32 lowercase hex characters."""
    return isinstance(value, str) and _HEX32.fullmatch(value) is not None


def validate_hex_id(value: str, what: str) -> str:
    if not is_hex_id(value):
        raise InvalidInput(f"invalid {what} {value!r}: expected 32 lowercase hex characters")
    return value


@dataclass(frozen=True, order=True, slots=True)
class TenantTimelineId:
    tenant_id: str
    timeline_id: str
    _text: str = field(init=False, repr=False, compare=False)
    """``TENANT/TIMELINE``, built once: a node keys its per-timeline maps by
    it, and at 10,000 timelines a new string per map per round was ~10 MiB."""

    def __post_init__(self) -> None:
        validate_hex_id(self.tenant_id, "tenant id")
        validate_hex_id(self.timeline_id, "timeline id")
        object.__setattr__(self, "_text", f"{self.tenant_id}/{self.timeline_id}")

    @classmethod
    def parse(cls, text: str) -> TenantTimelineId:
        """Parse ``TENANT_ID/TIMELINE_ID``."""
        if not isinstance(text, str) or text.count("/") != 1:
            raise InvalidInput(
                f"invalid timeline {text!r}: expected TENANT_ID/TIMELINE_ID, "
                "32 lowercase hex characters each"
            )
        tenant, timeline = text.split("/")
        return cls(tenant, timeline)

    @property
    def timeline_int(self) -> int:
        """The timeline id as the 128-bit number the election shifts by."""
        return int(self.timeline_id, 16)

    def __str__(self) -> str:
        return self._text
