"""``KILN_REDIS_MIN_REPLICAS_ACK`` at the API, on the stack's Redis (which has no replica): a create is
stored but answered 503 with ``Retry-After``, its Idempotency-Key replay finds the same prediction (never
a second one), and once acknowledgements are not required the replay is the 201. The HA tests
(test_redis_failover.py) show the 201 with a real replica."""

from __future__ import annotations

import pytest

from tests.support import assert_problem
from tests.support.predictions import app_for, depth2img_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {TOKEN_A}"}
BODY = {"version": "kiln/sd2-depth2img", "input": depth2img_input()}


def unacknowledged(response) -> None:
    assert_problem(response, 503, "not yet confirmed on the Redis replicas", "KILN_REDIS_MIN_REPLICAS_ACK=1")
    assert response.headers["retry-after"] == "1"


def test_a_create_not_on_the_replicas_is_a_503_and_its_replay_is_the_same_prediction(stack) -> None:
    key = {"Idempotency-Key": "replicated-ack-single"}
    with app_for(stack, redis_min_replicas_ack=1, redis_replica_ack_timeout_s=0.1) as strict:
        unacknowledged(strict.post("/v1/predictions", json=BODY, headers=HEADERS | key))
        unacknowledged(strict.post("/v1/predictions", json=BODY, headers=HEADERS | key))
    with app_for(stack) as relaxed:
        first = relaxed.post("/v1/predictions", json=BODY, headers=HEADERS | key)
        again = relaxed.post("/v1/predictions", json=BODY, headers=HEADERS | key)
    assert first.status_code == again.status_code == 201
    assert first.headers["idempotent-replayed"] == "true" and first.json()["id"] == again.json()["id"]


def test_batches_wait_for_the_replicas_too(stack) -> None:
    batch = {"predictions": [BODY, BODY]}
    with app_for(stack, redis_min_replicas_ack=1, redis_replica_ack_timeout_s=0.1) as strict:
        unacknowledged(strict.post("/v1/predictions/batch", json=batch, headers=HEADERS))
        unacknowledged(strict.post("/v1/batches", json=batch, headers=HEADERS))
