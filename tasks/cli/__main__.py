"""``python -m tasks.cli``: the same as the ``walbackup`` console script."""

from tasks.cli.main import main

main()
