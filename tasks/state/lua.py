"""The Lua scripts of ``tasks/state/lua/``, loaded once, shared helpers prepended."""

from __future__ import annotations

from importlib import resources


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
