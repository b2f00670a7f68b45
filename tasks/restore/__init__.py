"""Reading WAL back: ``fetch`` (PostgreSQL's restore_command), the spool and its prefetcher."""
