"""What every worker process runs: the Celery app, maintenance, metrics, logs."""
