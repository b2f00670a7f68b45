"""Exit codes of ``walbackup fetch``, and its one-line failure message.

Our own codes: barman-cloud's 2 is a network error and 3 a CLI error, the
other way round. PostgreSQL reads a restore_command exit status of 1..125 as
"not in the archive" (recovery then ends there: a PITR would stop early, at
the wrong LSN) and one above 125 as a failure that stops recovery until
someone looks. So only a true absence is 1; every other failure stops the
recovery. Standard library only (``sys``): the console entry imports this
before it knows whether the spool serves the segment.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_NOT_FOUND = 1  # the archive (reachable) has no such file
EXIT_INPUT = 200  # a bad timeline id, file name, offset, setting or command line
EXIT_STORAGE = 201  # remote storage unreachable, refusing us, or its bucket/directory missing
EXIT_CHECKSUM = 202  # the object read is not what was archived, or a segment archived is gone
EXIT_OTHER = 203


def fail(code: int, message: str) -> int:
    """Print ``walbackup: MESSAGE`` on stderr, on one line; returns ``code``."""
    print(f"walbackup: {' '.join(message.splitlines())}", file=sys.stderr)
    return code
