"""The long-lived clients one API process holds, built in ``create_app``'s lifespan."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import Celery
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from api.auth import Authenticator
from api.intake.idempotency import IdempotencyKeys
from api.lanes import Lanes
from api.ratelimit import RateLimiter, SpentBuckets
from api.streams.events import EventHub
from api.streams.slots import StreamSlots
from shared.batches.records import BatchStore
from shared.batches.settler import BatchSettler
from shared.db.client import connect, connect_async, redis_target
from shared.predictions.client_json import render_prediction
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.retention import DataRemoval
from shared.predictions.store import AsyncCreates, PredictionStore
from shared.runtime.celery_config import create_celery
from shared.runtime.prediction_core import PredictionCore, build_prediction_core
from shared.scheduling.dispatcher import Dispatcher
from shared.scheduling.task_messages import PredictMessages
from shared.security.signed_urls import UrlSigner
from shared.security.tokens import publish_bootstrap
from shared.settings import Settings
from shared.storage.files import FileStore
from shared.storage.s3 import Storage
from shared.webhooks.history import DeliveryHistory
from shared.webhooks.secrets import WebhookSecrets

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    redis: Redis
    # Async commands from the event loop (tokens, rate limiting, what waiters and streams read).
    async_redis: AsyncRedis
    # The process's one pub/sub connection: every Prefer: wait and stream waits on it.
    events: EventHub
    # At most KILN_MAX_OPEN_STREAMS_PER_TENANT streams and waits per token.
    stream_slots: StreamSlots
    # The store, webhook notifier, lifecycle, dispatcher and batches, built as the workers build them
    # (``shared.runtime.prediction_core``); the properties below read them.
    core: PredictionCore
    storage: Storage
    files: FileStore
    celery: Celery
    authenticator: Authenticator
    rate_limiter: RateLimiter
    # Tokens whose rate limit this process found spent, refused at once until it refills.
    spent: SpentBuckets
    idempotency: IdempotencyKeys
    # Each tenant's webhook signing secret (and its rotation).
    webhook_secrets: WebhookSecrets
    # The threads creates run on, a share per token (reads never wait for them).
    intake: Lanes
    # The same for uploads (POST /v1/files): their own threads, and a share per token.
    uploads: Lanes
    # The threads requests wait for S3 on (downloads, deletes), a share per owner of the data.
    storage_lanes: Lanes

    @classmethod
    def connect(cls, settings: Settings) -> Services:
        target = redis_target(settings)
        sync_redis = connect(target)
        storage = Storage(settings)
        celery = create_celery(settings)
        async_redis = connect_async(target)
        return cls(
            settings=settings,
            redis=sync_redis,
            async_redis=async_redis,
            events=EventHub.connect(target),
            stream_slots=StreamSlots(async_redis, settings.max_open_streams_per_tenant),
            core=build_prediction_core(settings, sync_redis, celery),
            storage=storage,
            files=FileStore(sync_redis, storage, settings.file_retention_s),
            celery=celery,
            authenticator=Authenticator(async_redis, settings),
            rate_limiter=RateLimiter(async_redis),
            spent=SpentBuckets(),
            idempotency=IdempotencyKeys(sync_redis, owner=secrets.token_hex(12)),
            webhook_secrets=WebhookSecrets(sync_redis, settings.webhook_secret_overlap_s),
            intake=Lanes(settings.intake_threads, settings.intake_threads_per_token),
            uploads=Lanes(settings.upload_threads, settings.uploads_per_token),
            storage_lanes=Lanes(settings.storage_threads, settings.storage_threads_per_token),
        )

    @property
    def store(self) -> PredictionStore:
        return self.core.store

    @cached_property
    def async_creates(self) -> AsyncCreates:
        """Single creates stored on the event loop (``PredictionStore.create_one`` on the asyncio client)."""
        return AsyncCreates(self.async_redis)

    @property
    def messages(self) -> PredictMessages:
        """Predict messages rendered from a Celery-made template, enqueued with the records."""
        return self.core.messages

    @property
    def lifecycle(self) -> PredictionLifecycle:
        """Ends predictions (here: cancels of queued ones) with their retention, metrics and webhook."""
        return self.core.lifecycle

    @property
    def batches(self) -> BatchStore:
        """Batch objects (/v1/batches)."""
        return self.core.batches

    @property
    def dispatcher(self) -> Dispatcher:
        """The lists a batch's items wait in before their predict messages are pushed."""
        return self.core.dispatcher

    @property
    def batch_settler(self) -> BatchSettler:
        """Records a finished batch's one webhook."""
        return self.core.batch_settler

    async def start(self) -> None:
        """The background tasks: the event listener, the open-stream slot keeper and the claims' alive beat."""
        await self.events.start()
        await self.stream_slots.start()
        await self.idempotency.start(self.async_redis)
        # Read the URL-signing secret now, so answering never needs Redis for it later.
        with contextlib.suppress(RedisError, OSError):
            _ = self.url_signer
        self.publish_bootstrap_tokens()

    def publish_bootstrap_tokens(self) -> None:
        """Tell ``kiln tokens`` which names ``KILN_API_TOKEN`` holds here (it may not have that setting)."""
        try:
            shared_names = publish_bootstrap(self.redis, self.settings.api_token)
        except (RedisError, OSError) as exc:
            log.warning("could not publish KILN_API_TOKEN's names for `kiln tokens` (%s)", exc)
            return
        if shared_names:
            log.warning(
                "KILN_API_TOKEN names %s are also names of tokens made with `kiln tokens create`: rename one of each",
                ", ".join(shared_names),
            )

    @cached_property
    def url_signer(self) -> UrlSigner:
        """Signs the URLs that work without a token (streams, outputs), with their expiry."""
        return UrlSigner.from_settings(self.settings, self.redis)

    @cached_property
    def data_removal(self) -> DataRemoval:
        """Deletes predictions' data on demand (``DELETE /v1/predictions/{id}``, ``DELETE /v1/batches/{id}``)."""
        return DataRemoval(self.redis, self.storage)

    @cached_property
    def webhook_history(self) -> DeliveryHistory:
        """Webhook messages with their attempts, the failed ones, and sending one again."""
        return DeliveryHistory(self.redis)

    def render(self, prediction: Prediction, base_url: str, *, with_position: bool = True) -> dict[str, Any]:
        """The prediction as clients see it, with freshly signed stream and output URLs, and, while it is
        queued, its ``queue_position`` (one Redis script; ``with_position=False`` leaves it null)."""
        return self.render_many([prediction], base_url, with_positions=with_position)[0]

    def render_with_position(self, prediction: Prediction, base_url: str, position: int | None) -> dict[str, Any]:
        """``render`` with a ``queue_position`` already known (a create reads it where it stores the
        prediction): no Redis read."""
        return render_prediction(prediction, base_url, self.url_signer, self.settings.retention_s, position)

    def render_many(
        self, predictions: Sequence[Prediction], base_url: str, *, with_positions: bool = True
    ) -> list[dict[str, Any]]:
        """``render`` of each, their queue positions read in one round trip (a page of a list). Positions
        that cannot be read (Redis failing just now) show null: a create that stored its predictions still
        answers with them."""
        positions: list[int | None] = [None] * len(predictions)
        if with_positions:
            try:
                positions = self.store.lines.positions(predictions)
            except RedisError as exc:
                log.warning("queue positions of %d predictions not read: %s", len(predictions), exc)
        signer, retention_s = self.url_signer, self.settings.retention_s
        return [
            render_prediction(prediction, base_url, signer, retention_s, position)
            for prediction, position in zip(predictions, positions, strict=True)
        ]

    async def close(self) -> None:
        await self.idempotency.close()
        await self.stream_slots.close()
        await self.events.close()
        self.redis.close()
        await self.async_redis.aclose()
