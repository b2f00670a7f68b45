"""What a WORKDIR holds on disk: its timeline directories, and a timeline directory's files.

Symlinks are never followed: a link named like a timeline or a segment is
not one.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.ids import is_hex_id
from tasks.errors import InvalidInput


def timeline_names(workdir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The ``TENANT`` directories of ``workdir`` and ``(TENANT, TIMELINE)`` of
    the ``WORKDIR/TENANT/TIMELINE`` directories, with valid ids; every other
    name is ignored. Raises ``InvalidInput`` when ``workdir`` is no directory."""
    found: list[tuple[str, str]] = []
    tenant_names: list[str] = []
    try:
        tenants = list(os.scandir(workdir))
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidInput(f"workdir {workdir} is not a directory") from None
    for tenant in tenants:
        if not (tenant.is_dir(follow_symlinks=False) and is_hex_id(tenant.name)):
            continue
        try:
            timelines = list(os.scandir(tenant.path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        tenant_names.append(tenant.name)
        found.extend(
            (tenant.name, timeline.name)
            for timeline in timelines
            if timeline.is_dir(follow_symlinks=False) and is_hex_id(timeline.name)
        )
    return tenant_names, found


def list_files(path: Path) -> list[tuple[str, int]]:
    """``(name, size)`` of the regular files in ``path``, symlinks excluded
    (a link named like a segment must never be uploaded as one). Raises
    ``FileNotFoundError`` when ``path`` is gone."""
    entries: list[tuple[str, int]] = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                if entry.is_file(follow_symlinks=False):
                    entries.append((entry.name, entry.stat(follow_symlinks=False).st_size))
            except FileNotFoundError:
                continue  # renamed or removed meanwhile; the next scan sees it
    return entries
