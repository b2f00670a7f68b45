"""``walbackup demo``: a whole cluster on this machine, on simulated WAL."""
