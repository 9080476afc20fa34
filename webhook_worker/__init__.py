"""The webhook worker: a CPU-only Celery worker that sends the webhook events GPU workers and the
API record (``shared.webhooks.outbox``) to their receivers, signed, retried, SSRF-guarded
(``delivery``), and runs the maintenance jobs every worker runs (``shared.runtime.worker_process``).

It imports neither torch nor diffusers, so it starts in well under a second and runs on the API
image. Entry point: ``celery -A webhook_worker.celery_app:app worker --pool threads -Q webhooks``.
"""
