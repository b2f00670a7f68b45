"""Pure logic: no I/O, no Celery, no Redis, no boto3 (a test checks the imports)."""
