"""The archive's lifecycle: its ledger in the bucket, verification and scrubbing.

``ledger_store`` reads and writes the ledger's pages, ``flush`` copies the
entries that commits put in Redis into pages, ``survey`` lists a timeline's
archive and judges it against the ledger (``walbackup verify`` and the
scrubber share it), ``scrubber`` verifies continuously and heals.
"""
