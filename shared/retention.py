"""Retention: inputs and outputs are deleted a while after a prediction finishes (uploaded files
when they expire); the prediction then shows ``data_removed: true`` and ``output: null``."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis import Redis

from shared import keys
from shared.objects import file_key, prediction_prefix
from shared.redis_client import range_members

if TYPE_CHECKING:
    from shared.storage import Storage

log = logging.getLogger(__name__)


def schedule(redis: Redis, kind: str, item_id: str, due: float) -> None:
    """Remember to delete the data of a ``prediction`` or ``file`` at ``due`` (unix seconds)."""
    redis.zadd(keys.retention(), {f"{kind}:{item_id}": due})


class Janitor:
    def __init__(self, redis: Redis, storage: Storage) -> None:
        self.redis = redis
        self.storage = storage

    def run_once(self, limit: int = 100) -> int:
        """Delete what is due; returns how many items were cleaned."""
        due = self.redis.zrangebyscore(keys.retention(), "-inf", time.time(), start=0, num=limit)
        for member in range_members(due):
            kind, _, item_id = member.partition(":")
            if kind == "prediction":
                self.storage.delete_prefix(prediction_prefix(item_id))
                if self.redis.exists(keys.prediction(item_id)):
                    self.redis.hset(keys.prediction(item_id), mapping={"data_removed": "true", "output": "null"})
            elif kind == "file":
                self.storage.delete(file_key(item_id))
            # Removed only once the data is gone, so a failure is retried on the next run.
            self.redis.zrem(keys.retention(), member)
            log.info("retention: removed the data of %s %s", kind, item_id)
        return len(due)
