"""Batches created at the same moment by several tenants on the real stack: no two items share an
id, each batch lists only its own items (its own prompts), and every batch completes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from tests.support.batches import all_prediction_ids, all_predictions, item, wait_for_batch
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration

TENANTS = 3
BATCHES_PER_TENANT = 10


def expected_prompts(tenant: int, batch: int) -> list[str]:
    """3 to 5 prompts, each naming its tenant, batch and place."""
    return [f"tenant {tenant} batch {batch} item {place}" for place in range(3 + batch % 3)]


def items_of(tenant: int, batch: int) -> list[dict]:
    """Fast items (64x64, one denoising step) with the batch's prompts."""
    return [
        item(place, input=item()["input"] | {"prompt": text, "num_inference_steps": 1, "prompt_strength": 1.0})
        for place, text in enumerate(expected_prompts(tenant, batch))
    ]


def test_batches_created_at_once_by_several_tenants_keep_their_own_items(stack):
    with ExitStack() as open_clients:
        clients = [
            open_clients.enter_context(client_for(stack.base_url, new_token(stack.redis_url, f"ids-{n}")[1]))
            for n in range(TENANTS)
        ]
        check_batches_created_at_once(clients)


def check_batches_created_at_once(clients: list[httpx.Client]) -> None:
    plans = [(tenant, batch) for batch in range(BATCHES_PER_TENANT) for tenant in range(TENANTS)]
    at_once = threading.Barrier(len(plans))

    def create(plan: tuple[int, int]) -> dict:
        tenant, batch = plan
        at_once.wait()
        response = clients[tenant].post("/v1/batches", json={"predictions": items_of(tenant, batch)})
        assert response.status_code == 201, response.text[:500]
        assert response.json()["counts"]["invalid"] == 0, response.json()
        return response.json()

    began = time.monotonic()
    with ThreadPoolExecutor(len(plans)) as pool:  # all sent at the same moment
        created = dict(zip(plans, pool.map(create, plans), strict=True))
    listed = {plan: all_predictions(clients[plan[0]], batch) for plan, batch in created.items()}
    ids = Counter(p["id"] for predictions in listed.values() for p in predictions)
    print(
        f"\n{len(created)} batches of {sum(map(len, listed.values()))} items from {TENANTS} tenants created at "
        f"once in {time.monotonic() - began:.1f} s: {len(ids)} item ids, {sum(n > 1 for n in ids.values())} shared"
    )
    assert [i for i, n in ids.items() if n > 1] == []
    for (tenant, batch), predictions in listed.items():
        assert [p["input"]["prompt"] for p in predictions] == expected_prompts(tenant, batch)
    for tenant, client in enumerate(clients):
        mine = {p["id"] for (owner, _), predictions in listed.items() if owner == tenant for p in predictions}
        assert all_prediction_ids(client) == mine

    for (tenant, batch), created_batch in created.items():
        done = wait_for_batch(clients[tenant], created_batch["id"], {"completed", "canceled"}, timeout=240)
        assert done["status"] == "completed"
        assert done["counts"]["total"] == done["counts"]["succeeded"] == len(expected_prompts(tenant, batch))
    print(f"all {len(created)} batches completed {time.monotonic() - began:.1f} s after they were sent")
