"""The names and sizes ``walbackup fetch`` checks, as standard-library copies of the core's.

``tasks.core.segments``, ``tasks.core.ids`` and ``tasks.storage.base`` hold
the real definitions, but importing them (``tasks.errors``, dataclasses,
hashlib) costs the spool's hit path more than serving a segment does. These
copies are deliberate, and ``tests/unit/test_restore_fast_path.py`` keeps them
equal to the originals.
"""

from __future__ import annotations

import re

SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
"""A complete segment's file name: ``tasks.core.segments.SEGMENT_NAME_RE``."""

PARTIAL_SUFFIX = ".partial"
"""``tasks.core.segments.PARTIAL_SUFFIX``."""

HISTORY_RE = re.compile(r"[0-9A-F]{8}\.history")
"""A timeline history file, ``TLI.history``, which recovery asks for."""

FETCHABLE_RE = re.compile(
    rf"{SEGMENT_RE.pattern}(?:{re.escape(PARTIAL_SUFFIX)})?|{HISTORY_RE.pattern}"
)
"""What ``walbackup fetch`` accepts: a segment name, one with ``.partial``, a history file."""

TTID_RE = re.compile(r"[0-9a-f]{32}/[0-9a-f]{32}")
"""``TENANT/TIMELINE`` as ``tasks.core.ids.TenantTimelineId.parse`` accepts it."""

CHUNK_BYTES = 1 << 20
"""Read and copy size: ``tasks.storage.base.CHUNK_BYTES``."""
