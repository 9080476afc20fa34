"""A Celery worker app made by Kiln's own ``create_celery`` from ``KILN_*`` variables, with one task
that records it ran in Redis: what the Sentinel tests run as a real worker process
(``celery -A tests.support.sentinel_worker_app:app worker``)."""

from __future__ import annotations

from shared.db.client import connect, redis_target
from shared.runtime.celery_config import create_celery
from shared.settings import Settings

RECORD_TASK = "kiln-test.record"
QUEUE = "kiln-test-sentinel"
DONE_KEY = "kiln-test:done"

settings = Settings()
app = create_celery(settings)


@app.task(name=RECORD_TASK)
def record(value: str) -> None:
    """Append ``value`` to ``DONE_KEY``, on whichever server is the primary now."""
    with connect(redis_target(settings)) as client:
        client.rpush(DONE_KEY, value)
