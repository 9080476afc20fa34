"""Batches created at the same moment by several tenants on the real stack: no two items share an
id, each batch lists only its own items (its own prompts), and every batch completes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.test_batch import item
from tests.integration.test_batch_objects import all_predictions, wait_for_batch
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration

TENANTS = 3
BATCHES_PER_TENANT = 10


def items_of(tenant: int, batch: int) -> list[dict]:
    """3 to 5 fast items (64x64, two steps), each with a prompt naming its tenant, batch and place."""
    return [
        item(place, input=item()["input"] | {"prompt": prompt(tenant, batch, place)}) for place in range(3 + batch % 3)
    ]


def prompt(tenant: int, batch: int, place: int) -> str:
    return f"tenant {tenant} batch {batch} item {place}"


def test_batches_created_at_once_by_several_tenants_keep_their_own_items(stack):
    clients = [client_for(stack.base_url, new_token(stack.redis_url, f"ids-{n}")[1]) for n in range(TENANTS)]
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
    with ThreadPoolExecutor(len(plans)) as pool:
        created = dict(zip(plans, pool.map(create, plans), strict=True))
    done = {
        plan: wait_for_batch(clients[plan[0]], batch["id"], {"completed", "canceled"})
        for plan, batch in created.items()
    }
    listed = {plan: all_predictions(clients[plan[0]], batch) for plan, batch in done.items()}
    took = time.monotonic() - began

    ids = Counter(p["id"] for predictions in listed.values() for p in predictions)
    print(
        f"\n{len(created)} batches from {TENANTS} tenants created at once: {len(ids)} item ids, "
        f"{sum(n - 1 for n in ids.values() if n > 1)} shared; all completed in {took:.1f} s"
    )
    assert [i for i, n in ids.items() if n > 1] == []
    for (tenant, batch), predictions in listed.items():
        expected = [prompt(tenant, batch, place) for place in range(3 + batch % 3)]
        assert [p["input"]["prompt"] for p in predictions] == expected
        assert {p["status"] for p in predictions} == {"succeeded"}
        shown = done[tenant, batch]
        assert shown["status"] == "completed"
        assert shown["counts"]["total"] == shown["counts"]["succeeded"] == len(expected)
    for tenant, client in enumerate(clients):
        mine = {p["id"] for (owner, _), predictions in listed.items() if owner == tenant for p in predictions}
        assert listed_predictions(client) == mine
        client.close()


def listed_predictions(client: httpx.Client) -> set[str]:
    """Every id in the tenant's ``GET /v1/predictions`` (all pages)."""
    found, url = set(), "/v1/predictions"
    while url:
        page = client.get(url).json()
        found |= {p["id"] for p in page["results"]}
        url = page["next"]
    return found
