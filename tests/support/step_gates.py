"""Step gates from the test's side (``worker.step_gates``): a prediction that runs until the test lets it go.

For a test that needs a prediction still running when it acts (a cancel, a shutdown, a time limit),
on any machine: never a step count that happens to be slow on this CPU. The stack must run with
``KILN_STEP_GATES=true`` (the integration stack does).
"""

from __future__ import annotations

import secrets

import httpx
import redis

from shared.db import keys
from tests.support import wait_until

# The line the worker logs when a prediction starts waiting at its gate.
WAITING = "Waiting at step gate"
# A closed gate opens by itself after this long, should the test process die holding it.
CLOSED_TTL_S = 600


class StepGate:
    """A closed gate, for a ``with`` block: predictions prompted ``gate.prompt`` wait after their
    first denoising step until ``open()`` or the end of the block."""

    def __init__(self, redis_url: str) -> None:
        self.name = secrets.token_hex(6)
        self.prompt = f"step-gate:{self.name}"
        self._redis = redis.Redis.from_url(redis_url)

    def __enter__(self) -> StepGate:
        self._redis.set(keys.step_gate(self.name), "closed", ex=CLOSED_TTL_S)
        return self

    def open(self) -> None:
        self._redis.delete(keys.step_gate(self.name))

    def __exit__(self, *exc: object) -> None:
        try:
            self.open()
        finally:
            self._redis.close()


def wait_until_waiting(client: httpx.Client, prediction_id: str, timeout: float = 120) -> dict:
    """Wait until the prediction waits at its gate (running, one step done); return its record."""

    def waiting():
        body = client.get(f"/v1/predictions/{prediction_id}").json()
        return body if WAITING in (body["logs"] or "") else None

    return wait_until(waiting, timeout, what=f"prediction {prediction_id} to wait at its step gate")


def open_every_gate(client: redis.Redis) -> list[str]:
    """Open the gates earlier tests left closed; returns their names."""
    prefix = keys.step_gate("")
    names = [key.decode().removeprefix(prefix) for key in client.scan_iter(match=prefix + "*")]
    if names:
        client.delete(*(keys.step_gate(name) for name in names))
    return names
