"""``walbackup fetch``'s front door: the restore spool first, then remote storage.

Both entries call it: the console script's fast parser (``tasks.cli.main``)
and typer's command (``tasks.cli.commands``). Standard library only until a
miss: it is on the path of every call PostgreSQL makes.
"""

from __future__ import annotations

from tasks.restore.exits import EXIT_OK, EXIT_OTHER, fail


def fetch(ttid: str, segment: str, dest: str, offset: int = 0) -> int:
    """``walbackup fetch``'s exit code: served from the restore spool
    (``tasks.restore.hit``) when it holds the segment, else fetched directly
    (``tasks.restore.fetch.run_fetch``). Never 1 but for a file the archive
    lacks: a traceback would exit 1, which PostgreSQL reads as "not archived"."""
    if offset == 0 and dest != "-":
        try:  # the spool only saves time: whatever fails here, fetch directly
            from tasks.restore.hit import try_serve

            if try_serve(ttid, segment, dest):
                return EXIT_OK
        except Exception:  # the direct fetch below says what is wrong
            pass
    try:
        from tasks.restore.fetch import run_fetch
    except Exception as exc:
        return fail(EXIT_OTHER, f"cannot load walbackup fetch: {type(exc).__name__}: {exc}")
    return run_fetch(ttid, segment, dest, offset)
