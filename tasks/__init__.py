"""walbackup: WAL backup from safekeeper nodes to object storage, on Celery.

``celery -A tasks`` finds the app through ``tasks.app``; it is imported lazily
so that the pure modules under ``tasks.core`` never pull in Celery.
"""


def __getattr__(name: str) -> object:  # no typing import: ``walbackup fetch`` loads this
    if name in ("app", "celery"):
        from tasks.app import app

        return app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
