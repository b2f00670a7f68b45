"""The ``walbackup`` command line: ``main`` (entry, fast ``fetch``) and ``commands`` (typer)."""
