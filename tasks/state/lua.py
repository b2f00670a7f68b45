"""The Lua scripts of ``tasks/state/lua/``: loaded once, registered per client.

Each ``NAME.lua`` is one operation with a KEYS/ARGV header; the shared
``_*.lua`` helpers are prepended to every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script


def load_scripts() -> dict[str, str]:
    """Every ``NAME.lua`` by stem, with the shared ``_*.lua`` helpers
    (``_lsn.lua`` first, then the others by name) prepended."""
    lua = resources.files("tasks.state").joinpath("lua")
    entries = sorted(
        (e for e in lua.iterdir() if e.name.endswith(".lua")),
        key=lambda e: (e.name != "_lsn.lua", e.name),
    )
    shared = "\n".join(e.read_text() for e in entries if e.name.startswith("_"))
    return {
        e.name.removesuffix(".lua"): shared + "\n" + e.read_text()
        for e in entries
        if not e.name.startswith("_")
    }


SCRIPT_SOURCES = load_scripts()


class Scripts:
    """Every script registered on one client (redis-py loads a script again
    when the server has lost it, after a restart for instance)."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self._scripts: dict[str, Script] = {
            name: client.register_script(source) for name, source in SCRIPT_SOURCES.items()
        }

    def run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        pipe: Pipeline[str] | None = None,
    ) -> Any:
        """Run script ``name``, on ``pipe`` when given (its result then comes
        with the pipeline's)."""
        return self._scripts[name](keys=list(keys), args=list(args), client=pipe)
