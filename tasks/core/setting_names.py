"""Names given as settings that are none: a mistyped key must not leave its
setting at the default unnoticed (``remote_storge`` would archive to the local
default directory instead of S3)."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

ENV_PREFIX = "WALBACKUP_"
NOT_SETTINGS = ("CONFIG_FILE", "TEST_")
"""Variables with the prefix that are not settings: the file's name, the tests' own."""


def unknown_keys(keys: Iterable[str], known: Collection[str]) -> list[str]:
    """A message for each key of the configuration file that is no setting."""
    problems = []
    for key in keys:
        name = key.lower()
        if name in known:
            continue
        if name.removeprefix(ENV_PREFIX.lower()) in known:
            bare = name.removeprefix(ENV_PREFIX.lower())
            problems.append(f"{key!r}: in the file the key is {bare!r} (no prefix)")
        else:
            problems.append(f"{key!r} is not a setting{_hint(name, known, '')}")
    return problems


def unknown_env(names: Iterable[str], known: Collection[str]) -> list[str]:
    """A message for each ``WALBACKUP_*`` variable among ``names`` that is no setting."""
    problems = []
    for name in names:
        upper = name.upper()
        bare = upper.removeprefix(ENV_PREFIX)
        if bare == upper or bare.startswith(NOT_SETTINGS) or bare.lower() in known:
            continue
        problems.append(f"{name} is not a setting{_hint(bare.lower(), known, ENV_PREFIX)}")
    return problems


def _hint(name: str, known: Collection[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if not close:
        return ""
    return f" (did you mean {prefix + close[0].upper() if prefix else repr(close[0])}?)"
