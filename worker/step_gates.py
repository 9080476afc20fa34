"""Step gates: a test's stand-in for a slow prediction. Off unless ``KILN_STEP_GATES`` is on.

A test of a cancel, a shutdown's grace period or a time limit needs a prediction that is still
running when the test acts, on any machine. A step count that happens to be slow on one CPU
finishes early on a faster one. With the setting on (the integration test stack sets it), a
prediction whose prompt starts with ``step-gate:<name>`` stops after its first denoising step and
waits while its gate is closed: while the Redis key ``shared.db.keys.step_gate(name)`` exists. It
keeps checking for a cancel, the time limit, a lost lease and a shutdown's hand-back as every
step does, so each of those ends it exactly as it would end a long denoising loop.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import redis

from shared.db import keys
from shared.predictions.record import Prediction
from shared.settings import Settings

log = logging.getLogger(__name__)

GATED_PROMPT = re.compile(r"step-gate:(\S+)")
# How often a waiting prediction looks at its gate and its interruptions.
POLL_S = 0.05


class StepGate:
    def __init__(self, client: redis.Redis, name: str) -> None:
        self.redis = client
        self.name = name

    @classmethod
    def of(cls, prediction: Prediction, settings: Settings, client: redis.Redis) -> StepGate | None:
        """The gate the prediction's prompt names, when gates are on; else None."""
        match = GATED_PROMPT.match(str(prediction.input.get("prompt") or "")) if settings.step_gates else None
        return cls(client, match[1]) if match else None

    def closed(self) -> bool:
        try:
            return bool(self.redis.exists(keys.step_gate(self.name)))
        except redis.RedisError as exc:  # Redis restarting: look again at the next poll
            log.warning("step gate %s not readable: %s", self.name, exc)
            return True

    def wait(self, check_interruptions: Callable[[], None]) -> None:
        """Return once the gate is open; ``check_interruptions`` raises to end the wait sooner."""
        while self.closed():
            check_interruptions()
            time.sleep(POLL_S)
