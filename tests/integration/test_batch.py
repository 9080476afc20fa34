"""Batch create, fair scheduling (single creates overtake batch backlogs) and queue caps, with real processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
import redis

from shared.db import keys
from shared.predictions.store import PredictionStore
from shared.settings import tenant_of, token_digest
from tests.support import wait_for_status
from tests.support.batches import item, tiny_image
from tests.support.stack import TOKEN_A, Stack, extra_api

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "canceled"}


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    for fragment in fragments:
        assert fragment in response.json()["detail"], response.json()


def tenant_index(stack: Stack, token: str) -> int:
    with redis.Redis.from_url(stack.redis_url) as client:
        return client.zcard(keys.tenant_predictions(tenant_of(token_digest(token))))


def test_batch_answers_every_item_in_order_and_runs_only_the_valid_ones(stack, client):
    before = tenant_index(stack, TOKEN_A)
    items = [
        item(1),
        item(2, input={"prompt": "x", "input_image": tiny_image(), "num_inference_steps": 0}),
        {"model": "kiln/no-such-model", "input": {}},
        {"model": "kiln/sd2-depth2img", "input": item(3)["input"], "webhook_events_filter": ["completed"]},
        {"input": item(4)["input"]},
        item(5, webhook="not a url"),
    ]
    response = client.post("/v1/predictions/batch", json={"predictions": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(items)

    created = [results[0], results[3]]
    for prediction, seed in zip(created, (1, 3), strict=True):
        assert prediction["status"] == "starting" and prediction["model"] == "kiln/sd2-depth2img"
        assert prediction["input"]["seed"] == seed
    for index, fragment in (
        (1, "input.num_inference_steps"),
        (2, "kiln/no-such-model"),
        (4, "exactly one of"),
        (5, "webhook"),
    ):
        problem = results[index]
        assert "id" not in problem and problem["status"] == 422 and problem["title"], problem
        assert fragment in problem["detail"], problem

    assert tenant_index(stack, TOKEN_A) - before == 2  # nothing stored for the invalid items
    for prediction in created:
        done = wait_for_status(client, prediction["id"], TERMINAL)
        assert done["status"] == "succeeded", done["error"]


def test_batch_idempotency_key_covers_the_whole_batch(client):
    body = {"predictions": [item(11), {"model": "kiln/nope", "input": {}}]}
    headers = {"Idempotency-Key": f"batch-{secrets.token_hex(4)}"}
    first = client.post("/v1/predictions/batch", json=body, headers=headers)
    again = client.post("/v1/predictions/batch", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert [r.get("id") for r in again.json()["results"]] == [r.get("id") for r in first.json()["results"]]
    assert again.json()["results"][1]["status"] == 422
    other = client.post("/v1/predictions/batch", json={"predictions": [item(12)]}, headers=headers)
    assert_problem(other, 409, "Idempotency-Key")
    wait_for_status(client, first.json()["results"][0]["id"], TERMINAL)


def test_batch_over_the_item_limit_is_refused(client):
    response = client.post("/v1/predictions/batch", json={"predictions": [{}] * 10_001})
    assert_problem(response, 422, "10001 items", "at most 10000")


def test_single_create_of_another_tenant_starts_before_a_batch_backlog_drains(stack, client, other_client):
    backlog = client.post("/v1/predictions/batch", json={"predictions": [item(seed) for seed in range(500)]})
    assert backlog.status_code == 200, backlog.text[:500]
    backlog_ids = [r["id"] for r in backlog.json()["results"]]
    assert len(backlog_ids) == 500
    with redis.Redis.from_url(stack.redis_url) as redis_client:
        store = PredictionStore(redis_client)
        try:
            response = other_client.post("/v1/predictions", json=item(999))
            assert response.status_code == 201, response.text
            interactive = wait_for_status(other_client, response.json()["id"], TERMINAL)
            assert interactive["status"] == "succeeded", interactive["error"]
            queued_seen = client.get("/v1/queue").json()["queued"]
            backlog_now = store.get_many(backlog_ids)
            started_before = [
                p
                for p in backlog_now
                if p.started_at is not None and p.started_at.isoformat() < _iso(interactive["started_at"])
            ]
            # Without priorities every one of the 500 would have started first.
            assert len(started_before) < len(backlog_ids) // 2, len(started_before)
            still_queued = sum(1 for p in backlog_now if p.status.value == "starting")
            assert queued_seen >= still_queued > 0
        finally:
            for prediction_id in backlog_ids:
                store.request_cancel(prediction_id)
    assert client.get("/v1/queue").json()["queued"] == 0


def _iso(timestamp: str) -> str:
    return timestamp.replace("Z", "+00:00")


TOKEN_C = "token-c-" + secrets.token_hex(8)
TENANT_CAP = 3
TOTAL_CAP = 50


@pytest.fixture
def capped_api(stack: Stack) -> Iterator[httpx.Client]:
    """A second API on the same Redis with small queue caps and its own tenant."""
    settings = {
        "KILN_API_TOKEN": TOKEN_C,
        "KILN_MAX_QUEUED_PER_TENANT": str(TENANT_CAP),
        "KILN_MAX_QUEUED_TOTAL": str(TOTAL_CAP),
    }
    with (
        extra_api(stack, settings, "api-capped") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN_C}"}, timeout=30) as capped,
    ):
        yield capped


def test_queue_caps_refuse_with_retry_after_and_enqueue_nothing(stack, capped_api):
    tenant = tenant_of(token_digest(TOKEN_C))
    over = capped_api.post("/v1/predictions/batch", json={"predictions": [item(s) for s in range(TENANT_CAP + 1)]})
    # More than the cap itself: no wait would admit it, so no Retry-After.
    assert_problem(over, 422, f"{TENANT_CAP + 1} predictions", f"at most {TENANT_CAP}", "never fit")
    assert "retry-after" not in over.headers
    assert tenant_index(stack, TOKEN_C) == 0
    assert capped_api.get("/v1/queue").json()["queued"] == 0

    with redis.Redis.from_url(stack.redis_url) as redis_client:
        # The tenant's queue is full (as if TENANT_CAP of its predictions were waiting).
        redis_client.hset(keys.queued_by_tenant(), tenant, TENANT_CAP)
        try:
            assert capped_api.get("/v1/queue").json()["queued"] == TENANT_CAP
            single = capped_api.post("/v1/predictions", json=item(1))
            assert_problem(single, 429, f"at most {TENANT_CAP} predictions queued", "KILN_MAX_QUEUED_PER_TENANT")
            assert int(single.headers["retry-after"]) > 0
        finally:
            redis_client.hdel(keys.queued_by_tenant(), tenant)
        # The service's queue is full.
        redis_client.hincrby(keys.queued_by_family(), "gpu.test-filler", TOTAL_CAP)
        try:
            assert_problem(capped_api.post("/v1/predictions", json=item(2)), 503, "KILN_MAX_QUEUED_TOTAL")
        finally:
            redis_client.hdel(keys.queued_by_family(), "gpu.test-filler")
    assert tenant_index(stack, TOKEN_C) == 0

    within = capped_api.post("/v1/predictions/batch", json={"predictions": [item(s) for s in range(TENANT_CAP)]})
    assert within.status_code == 200, within.text
    for result in within.json()["results"]:
        assert wait_for_status(capped_api, result["id"], TERMINAL)["status"] == "succeeded"
    assert capped_api.get("/v1/queue").json()["queued"] == 0


def test_a_single_create_refused_at_the_cap_releases_its_idempotency_key(stack, capped_api):
    """A single create is stored on the event loop (``store_and_enqueue_one_async``): refused there, its
    Idempotency-Key is released, so a retry with it once there is room creates (not a 409 or a replay)."""
    tenant = tenant_of(token_digest(TOKEN_C))
    headers = {"Idempotency-Key": "refused-at-the-cap"}
    with redis.Redis.from_url(stack.redis_url) as redis_client:
        redis_client.hset(keys.queued_by_tenant(), tenant, TENANT_CAP)
        try:
            refused = capped_api.post("/v1/predictions", json=item(1), headers=headers)
            assert_problem(refused, 429, "KILN_MAX_QUEUED_PER_TENANT")
        finally:
            redis_client.hdel(keys.queued_by_tenant(), tenant)
    retried = capped_api.post("/v1/predictions", json=item(1), headers=headers)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert wait_for_status(capped_api, retried.json()["id"], TERMINAL)["status"] == "succeeded"
