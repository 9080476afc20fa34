"""Which predictions a worker will be handed next: read off Celery's Redis lists, without taking them.

A GPU worker takes one message at a time (solo pool, prefetch multiplier 1), so what waits behind
the running job is still in Redis. kombu's Redis transport pops the lists of a worker's queues
with one BRPOP, priority step by priority step, each list from its right end; reading them in the
same order gives the upcoming prediction ids. Peeking never claims anything: whoever acts on a
peeked id (micro-batching) claims it through the prediction record's own lease, and the Celery
message, delivered later, finds it taken and does nothing.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence

from redis import Redis

from shared.scheduling import queues

log = logging.getLogger(__name__)


def prediction_id_of(raw: bytes) -> str | None:
    """The prediction id a kombu-on-Redis ``kiln.predict`` message carries (None for any other message)."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != queues.PREDICT_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        log.debug("unreadable queue message skipped: %s", exc)
        return None


class QueuePeek:
    def __init__(self, redis: Redis, queue_names: Sequence[str]) -> None:
        self.redis = redis
        # kombu's BRPOP key order: priority step first, then the queues.
        self.lists = [queues.priority_lists(queue)[step] for step in queues.PRIORITY_STEPS for queue in queue_names]

    def upcoming(self, limit: int) -> list[str]:
        """Up to ``limit`` prediction ids, in the order this worker's queues would deliver them."""
        if not self.lists or limit <= 0:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self.lists:
                pipe.lrange(key, -limit, -1)
            replies = pipe.execute()
        ids: list[str] = []
        for messages in replies:
            for raw in reversed(messages):
                prediction_id = prediction_id_of(raw)
                if prediction_id is not None and prediction_id not in ids:
                    ids.append(prediction_id)
                    if len(ids) == limit:
                        return ids
        return ids
