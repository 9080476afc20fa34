"""The webhook worker's Celery entry point:

    celery -A webhook_worker.celery_app:app worker --pool threads --concurrency 8 -Q webhooks

Delivery is network-bound, so a thread pool. Beside its tasks the process runs the maintenance jobs
(lease reaper, retention) and re-sends due webhook deliveries (``shared.runtime.worker_process``). Nothing
here imports torch or diffusers (tests/webhook_worker/test_webhook_worker.py checks it): it runs on the API
image.
"""

from __future__ import annotations

from shared.runtime.celery_config import create_celery
from shared.runtime.worker_process import WorkerProcess
from shared.settings import get_settings
from shared.webhooks.delivery import add_delivery_task

app = create_celery(get_settings())
process = WorkerProcess(get_settings(), app)
process.connect_signals()
add_delivery_task(app, process)
