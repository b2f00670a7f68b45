"""``walbackup demo``: a whole cluster on this machine, on simulated WAL.

``run`` (``run_demo``: orchestration, signals), ``processes`` (Redis, nodes,
beat, Flower as child processes), ``writer`` (the simulated WAL writer),
``view`` (the live table), ``verify`` (the end-of-run check), ``hints`` (pointing
the CLI at the demo's cluster).
"""
