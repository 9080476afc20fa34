"""``GET /metrics``: Prometheus text format.

Counters this process recorded (``shared.runtime.metrics``), plus queue depth read from Redis at scrape
time. Like ``/health`` it needs no token: serve it on the cluster network and keep it off the
public ingress.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis import Redis

from api.deps import ServicesDep
from shared.db import keys
from shared.scheduling import queues

router = APIRouter(tags=["health"])

# Every queue a worker consumes: the GPU families and the webhook queue.
WATCHED_QUEUES = (*queues.GPU_QUEUES, queues.WEBHOOKS)


class QueueDepthCollector:
    """Scrape-time gauges from Redis. Every API replica reports the same cluster-wide values, so
    aggregate them with ``max``, not ``sum``."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("kiln_redis_up", "1 when Redis answered this scrape's queue reads, else 0.")
        lists = [(queue, step, name) for queue in WATCHED_QUEUES for step, name in queues.priority_lists(queue).items()]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for _, _, name in lists:
                    pipe.llen(name)
                pipe.hgetall(keys.queued_by_family())
                *lengths, families = pipe.execute()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        length = GaugeMetricFamily(
            "kiln_queue_length",
            "Messages waiting in a Celery queue's Redis list, by queue and priority step "
            "(jobs being run are not counted); what KEDA scales the GPU workers on.",
            labels=["queue", "priority"],
        )
        for (queue, step, _), count in zip(lists, lengths, strict=True):
            length.add_metric([queue, str(step)], count)
        yield length
        queued = GaugeMetricFamily(
            "kiln_queued_predictions",
            "Predictions waiting to start (status starting), by model family.",
            labels=["family"],
        )
        counts = {name: 0 for name in queues.GPU_QUEUES} | {k.decode(): max(0, int(v)) for k, v in families.items()}
        for family, count in sorted(counts.items()):
            queued.add_metric([family], count)
        yield queued


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep) -> Response:
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(QueueDepthCollector(services.redis))
    return Response(generate_latest(REGISTRY) + generate_latest(scraped), media_type=CONTENT_TYPE_LATEST)
