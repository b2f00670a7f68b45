"""How a command fails: one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import redis
import typer

from tasks.errors import BrokerUnavailable, InvalidInput, WalBackupError

EXIT_INPUT = 2
"""A bad argument or setting."""
EXIT_UNAVAILABLE = 3
"""Redis, the broker or remote storage cannot be reached or used."""


def fail(code: int, message: str) -> NoReturn:
    """Print ``walbackup: MESSAGE`` on stderr and exit with ``code``."""
    typer.echo(f"walbackup: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Turn the failures a command can meet into one line and its exit code.

    ``what`` names the service being reached, for the message (no secrets)."""
    try:
        yield
    except InvalidInput as exc:
        fail(EXIT_INPUT, str(exc))
    except (redis.RedisError, BrokerUnavailable, OSError) as exc:
        fail(EXIT_UNAVAILABLE, f"cannot reach {what}: {exc}")
    except WalBackupError as exc:  # remote storage: its messages name it
        fail(EXIT_UNAVAILABLE, str(exc))
