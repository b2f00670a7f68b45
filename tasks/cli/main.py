"""The ``walbackup`` console entry: ``fetch`` is parsed here, everything else by typer.

PostgreSQL runs ``walbackup fetch`` once per segment as its ``restore_command``:
a spool hit imports only ``sys`` here and ``tasks.restore.command`` and
``.hit`` (six standard modules, when the settings come from the environment),
never typer, rich or Celery; a spool miss loads the rest
(``tasks.restore.fetch``).
``tests/unit/test_restore_fast_path.py`` checks this.
"""

from __future__ import annotations

import sys

from tasks.restore.command import fetch
from tasks.restore.exits import EXIT_INPUT, EXIT_OK, fail

_USAGE = "usage: walbackup fetch TTID SEGMENT DEST [--offset N]"
_HELP = f"""{_USAGE}

Restore one WAL file (a segment, SEGMENT.partial or TLI.history) of timeline
TTID (TENANT_ID/TIMELINE_ID) from the archive to DEST (- for stdout), as
PostgreSQL's restore_command:

    restore_command = 'walbackup fetch 9f1c…e2/4b7a…01 %f %p'

Exit codes: 0 restored; 1 not in the archive. Above 125, which makes
PostgreSQL stop recovery instead of ending it early: 200 bad input or
setting, or nothing archived of TTID (unless PostgreSQL runs it as a
standby), 201 remote storage unreachable or missing, 202 checksum mismatch
(DEST is not created), 203 other."""


def fetch_main(argv: list[str]) -> int:
    """Argument parsing for the fast path of ``walbackup fetch``."""
    if any(a in ("-h", "--help") for a in argv):
        try:
            print(_HELP, flush=True)
        except BrokenPipeError:  # `walbackup fetch --help | head`: no traceback at exit
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    args: list[str] = []
    offset = 0
    rest = iter(argv)
    try:
        for arg in rest:
            if arg == "--offset":
                offset = int(next(rest))
            elif arg.startswith("--offset="):
                offset = int(arg.split("=", 1)[1])
            else:
                args.append(arg)
    except (StopIteration, ValueError):
        return fail(EXIT_INPUT, f"--offset needs an integer; {_USAGE}")
    if len(args) != 3:
        return fail(EXIT_INPUT, _USAGE)
    return fetch(args[0], args[1], args[2], offset)


def main() -> None:
    """The ``walbackup`` console script."""
    if len(sys.argv) > 1 and sys.argv[1] == "fetch":
        sys.exit(fetch_main(sys.argv[2:]))
    from tasks.cli.commands import cli

    cli()
