"""The long-lived clients one API process holds, built in ``create_app``'s lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api.idempotency import IdempotencyKeys
from api.ratelimit import RateLimiter
from shared.celery_config import create_celery
from shared.files import FileStore
from shared.lifecycle import PredictionLifecycle
from shared.redis_client import connect, connect_async
from shared.secrets import url_signing_secret
from shared.settings import Settings
from shared.storage import Storage
from shared.store import PredictionStore
from shared.task_messages import PredictMessages
from shared.webhook_outbox import WebhookNotifier, WebhookOutbox


@dataclass
class Services:
    settings: Settings
    redis: Redis
    # Async commands from the event loop (rate limiting), with the usual read timeout.
    async_redis: AsyncRedis
    # Async, without a read timeout: waiting on prediction events (Prefer: wait, streams) without
    # holding a thread, for as long as the wait asks.
    event_redis: AsyncRedis
    store: PredictionStore
    storage: Storage
    files: FileStore
    celery: Celery
    # Predict messages rendered from a Celery-made template, enqueued with the records.
    messages: PredictMessages
    notifier: WebhookNotifier
    # Ends predictions (here: cancels of queued ones) with their retention, metrics and webhook.
    lifecycle: PredictionLifecycle
    rate_limiter: RateLimiter
    idempotency: IdempotencyKeys

    @classmethod
    def connect(cls, settings: Settings) -> Services:
        sync_redis = connect(settings.redis_url)
        store = PredictionStore(sync_redis, settings.retention_s)
        storage = Storage(settings)
        celery = create_celery(settings)
        async_redis = connect_async(settings.redis_url)
        notifier = WebhookNotifier(store, WebhookOutbox(sync_redis, settings), celery)
        return cls(
            settings=settings,
            redis=sync_redis,
            async_redis=async_redis,
            # No read timeout: pub/sub waits block for as long as Prefer: wait or a stream asks.
            event_redis=connect_async(settings.redis_url, socket_timeout=None),
            store=store,
            storage=storage,
            files=FileStore(sync_redis, storage, settings.file_retention_s),
            celery=celery,
            messages=PredictMessages(celery),
            notifier=notifier,
            lifecycle=PredictionLifecycle(store, notifier),
            rate_limiter=RateLimiter(async_redis, settings.rate_limit_per_s, settings.rate_limit_burst),
            idempotency=IdempotencyKeys(sync_redis),
        )

    @cached_property
    def url_signing_secret(self) -> str:
        return url_signing_secret(self.settings, self.redis)

    async def close(self) -> None:
        self.redis.close()
        await self.event_redis.aclose()
        await self.async_redis.aclose()
