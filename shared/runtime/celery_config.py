"""The Celery app both sides share: the API only sends tasks by name, workers consume them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from shared.db.client import RedisTarget, redis_target
from shared.runtime.redis_broker import use_fixed_channels
from shared.scheduling import queues
from shared.settings import Settings

# Behind Sentinel, a task sent while the primary moves is sent again, this often, until the sentinels
# have promoted a replica (~2.3 s measured; kombu's default 3 quick tries give up first).
SENTINEL_PUBLISH_RETRY_POLICY = {"max_retries": 30, "interval_start": 0.2, "interval_step": 0.1, "interval_max": 0.5}


def broker_url(target: RedisTarget) -> str:
    """The broker URL: the Redis URL itself, or one ``sentinel://`` URL per sentinel (kombu's
    Sentinel transport), each with the URL's credentials and database."""
    if not target.sentinels:
        return target.url
    parts = urlsplit(target.url)
    credentials = parts.netloc.rpartition("@")[0]
    userinfo = f"{credentials}@" if credentials else ""
    database = parts.path if parts.path not in ("", "/") else "/0"
    return ";".join(f"sentinel://{userinfo}{host}:{port}{database}" for host, port in target.sentinels)


def broker_options(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    """``broker_transport_options``: the visibility timeout and priority lists, and behind Sentinel
    the master's name (and the sentinels' own password, if they have one, as ``shared.db.client`` gives it)."""
    # One Redis list per priority step, popped in order: interactive creates overtake batches.
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "priority_steps": queues.PRIORITY_STEPS,
    }
    if target.sentinels:
        options["master_name"] = target.master
        if target.sentinel_password:
            options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return options


def create_celery(settings: Settings) -> Celery:
    # A worker survives its broker connection being cut while it holds messages (kombu bug, see there).
    use_fixed_channels()
    target = redis_target(settings)
    app = Celery("kiln", broker=broker_url(target), set_as_current=False)
    app.conf.update(
        # A job is acknowledged only after it ran, and requeued if its worker died, so no
        # accepted prediction is lost; the prediction record makes a rerun harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queues.SD2_DEPTH,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_options(settings, target),
        task_default_priority=queues.PRIORITY_INTERACTIVE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if target.sentinels:
        app.conf.task_publish_retry_policy = SENTINEL_PUBLISH_RETRY_POLICY
    return app
