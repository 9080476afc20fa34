"""A single create of a token the API process has seen valid leaves the token check and the rate limit
to its store's script (``api.deps.DeferredAuth``): one round trip fewer. It still answers as if the token
were checked first: a revoked token is refused at once with nothing stored, a spent rate limit is a 429
with nothing stored, and either wins over a bad body, an unknown model or a bad header."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis
from starlette.requests import Request

from api.auth import Authenticator
from api.deps import DeferredAuth
from shared.db import keys
from shared.security.tokens import TokenRegistry, tenant_of, token_digest
from tests.support import assert_problem
from tests.support.image_servers import ImageServer
from tests.support.predictions import app_for, depth2img_input
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
# Validated on the event loop (``api.intake.loop_fit``): its token check is left to the store.
BODY = {"version": "kiln/sd2-depth2img", "input": depth2img_input(48, 48, num_inference_steps=2)}
# A create refused by its store's token check, and creates answered before their store (each for a reason
# of its own, or checked before their intake thread or wait): a refused token answers first all the same.
REQUESTS = {
    "stored-on-the-loop": ({"json": BODY}, 201),
    "body-without-input": ({"json": {"version": "kiln/sd2-depth2img"}}, 422),
    "unknown-version": ({"json": {**BODY, "version": "kiln/nope"}}, 422),
    "bad-input": ({"json": {**BODY, "input": {**BODY["input"], "seed": "x"}}}, 422),
    "bad-header": ({"json": BODY, "headers": {"Cancel-After": "soon"}}, 400),
    "waited": ({"json": BODY, "headers": {"Prefer": "wait=1"}}, 201),
    "intake-thread": ({"json": {**BODY, "input": {**BODY["input"], "input_image": "http://127.0.0.1:9/a.png"}}}, 422),
}


def stored_count(redis_url: str, token: str) -> int:
    with Redis.from_url(redis_url) as client:
        return int(client.zcard(keys.tenant_predictions(tenant_of(token_digest(token)))))


@pytest.fixture
def counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens checked on their own round trip (``Authenticator.caller_within_limit``)."""
    checked: list[str] = []
    check = Authenticator.caller_within_limit

    async def counting(self: Authenticator, token: str, cost: int = 1):  # type: ignore[no-untyped-def]
        checked.append(token)
        return await check(self, token, cost)

    monkeypatch.setattr(Authenticator, "caller_within_limit", counting)
    return checked


def test_a_seen_token_is_checked_by_its_creates_store_and_answers_with_its_rate_limit(stack, counted_checks):
    _, token = new_token(stack.redis_url, "deferred", rate_limit_per_s=0.01, rate_limit_burst=3)
    auth = {"Authorization": f"Bearer {token}"}
    with app_for(stack) as app:
        first = app.post("/v1/predictions", json=BODY, headers=auth)
        assert first.status_code == 201, first.text
        assert counted_checks == [token] and first.headers["ratelimit-remaining"] == "2"
        second = app.post("/v1/predictions", json=BODY, headers=auth)
        assert second.status_code == 201, second.text
        assert counted_checks == [token], "the second create checked its token on a round trip of its own"
        assert second.headers["ratelimit-remaining"] == "1"  # taken by the store's script
        third = app.post("/v1/predictions", json=BODY, headers=auth)
        assert third.status_code == 201 and third.headers["ratelimit-remaining"] == "0"
        before = stored_count(stack.redis_url, token)
        refused = assert_problem(app.post("/v1/predictions", json=BODY, headers=auth), 429, "bursts of 3")
        assert refused["status"] == 429 and stored_count(stack.redis_url, token) == before == 3
        limited = app.post("/v1/predictions", json=BODY, headers=auth)
        assert int(limited.headers["retry-after"]) >= 1 and limited.headers["ratelimit-remaining"] == "0"
        for created in (first, second, third):
            app.post(f"/v1/predictions/{created.json()['id']}/cancel", headers=auth)


@pytest.mark.parametrize("kind", REQUESTS)
def test_a_revoked_token_is_refused_before_anything_else_and_nothing_is_stored(stack, counted_checks, kind):
    request_args, _ = REQUESTS[kind]
    name, token = new_token(stack.redis_url, "revoked")
    auth = {"Authorization": f"Bearer {token}"}
    with app_for(stack) as app:
        seen = app.get("/v1/queue", headers=auth)  # not a create: checked on its own
        assert seen.status_code == 200
        first = app.post("/v1/predictions", json=BODY, headers=auth)  # seen valid by a create's check
        assert first.status_code == 201
        app.post(f"/v1/predictions/{first.json()['id']}/cancel", headers=auth)
        with Redis.from_url(stack.redis_url) as client:
            TokenRegistry(client).revoke(name)
        headers = auth | request_args.get("headers", {})
        refused = app.post("/v1/predictions", json=request_args["json"], headers=headers)
        assert_problem(refused, 401, "revoked")
        assert refused.headers["www-authenticate"] == "Bearer"
        assert stored_count(stack.redis_url, token) == 1
        # Forgotten as seen: the next request checks the token first, on its own round trip.
        checks = len(counted_checks)
        assert_problem(app.post("/v1/predictions", json=BODY, headers=auth), 401, "revoked")
        assert len(counted_checks) == checks + 1


@pytest.mark.parametrize("kind", REQUESTS)
def test_a_spent_rate_limit_answers_429_before_anything_else(stack, kind):
    request_args, own_status = REQUESTS[kind]
    _, token = new_token(stack.redis_url, "spent", rate_limit_per_s=0.01, rate_limit_burst=1)
    _, fresh = new_token(stack.redis_url, "fresh")
    with app_for(stack) as app:
        auth = {"Authorization": f"Bearer {token}"}
        first = app.post("/v1/predictions", json=BODY, headers=auth)
        assert first.status_code == 201
        app.post(f"/v1/predictions/{first.json()['id']}/cancel", headers=auth)
        refused = app.post("/v1/predictions", json=request_args["json"], headers=auth | request_args.get("headers", {}))
        assert_problem(refused, 429, "bursts of 1")
        assert stored_count(stack.redis_url, token) == 1
        # The same request of a token seen valid and within its limit answers for itself.
        fresh_auth = {"Authorization": f"Bearer {fresh}"}
        assert app.get("/v1/queue", headers=fresh_auth).status_code == 200
        own = app.post(
            "/v1/predictions", json=request_args["json"], headers=fresh_auth | request_args.get("headers", {})
        )
        assert own.status_code == own_status, own.text
        if own.status_code == 201:
            app.post(f"/v1/predictions/{own.json()['id']}/cancel", headers=fresh_auth)


def test_a_spent_bucket_is_refused_at_once_without_a_round_trip_or_the_requests_work(stack, counted_checks):
    """Once this process found a token's bucket spent, its requests are 429s at once until the bucket refills
    (``api.ratelimit.SpentBuckets``): a flood past the limit cost as much as the creates themselves."""
    _, token = new_token(stack.redis_url, "spent-at-once", rate_limit_per_s=0.01, rate_limit_burst=2)
    auth = {"Authorization": f"Bearer {token}"}
    with ImageServer("127.0.0.1") as images, app_for(stack, image_fetch_allow_private=True) as app:
        first = app.post("/v1/predictions", json=BODY, headers=auth)
        assert first.status_code == 201 and counted_checks == [token]
        assert app.post(f"/v1/predictions/{first.json()['id']}/cancel", headers=auth).status_code == 200
        assert counted_checks == [token, token]
        assert_problem(app.post("/v1/predictions", json=BODY, headers=auth), 429, "bursts of 2")  # by the store
        with_url = {**BODY, "input": {**BODY["input"], "input_image": images.url("/a.png")}}
        for refused in (
            app.post("/v1/predictions", json=BODY, headers=auth),
            app.post("/v1/predictions", json=with_url, headers=auth),
            app.post("/v1/predictions", content=b"{", headers=auth | {"Content-Type": "application/json"}),
            app.get("/v1/queue", headers=auth),
        ):
            assert_problem(refused, 429, "bursts of 2")
            assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit-remaining"] == "0"
        assert counted_checks == [token, token], "a spent token's request was checked on a round trip of its own"
        assert images.hits == 0 and stored_count(stack.redis_url, token) == 1


def test_a_revoked_bootstrap_token_is_refused_by_the_store(stack, counted_checks):
    token = f"boot-{time.time_ns()}"
    auth = {"Authorization": f"Bearer {token}"}
    with app_for(stack, api_token=f"deferred-boot={token}") as app:
        first = app.post("/v1/predictions", json=BODY, headers=auth)
        assert first.status_code == 201
        app.post(f"/v1/predictions/{first.json()['id']}/cancel", headers=auth)
        with Redis.from_url(stack.redis_url) as client:
            client.sadd(keys.revoked_tokens(), token_digest(token))
        checks = len(counted_checks)
        assert_problem(app.post("/v1/predictions", json=BODY, headers=auth), 401, "revoked")
        assert len(counted_checks) == checks, "refused by a check of its own, not by the store"
        assert stored_count(stack.redis_url, token) == 1


def test_concurrent_creates_of_a_seen_token_take_exactly_its_burst(stack):
    # Through the stack's API process: the token seen valid by a GET (one of its burst of 6), then 24
    # creates at once, each checked by its store's script; the bucket does not refill meanwhile.
    _, token = new_token(stack.redis_url, "burst", rate_limit_per_s=0.001, rate_limit_burst=6)
    with client_for(stack.base_url, token) as client:
        assert client.get("/v1/queue").status_code == 200
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/predictions", json=BODY), range(24)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * 5 + [429] * 19, statuses
        assert stored_count(stack.redis_url, token) == 5


def test_a_create_of_a_seen_token_leaves_no_reference_cycle(stack, counted_checks):
    # Its DeferredAuth lives on the request's state: holding the request back made a cycle that left every
    # create's request, scope and body to the cyclic garbage collector (~100 µs of each create's CPU).
    _, token = new_token(stack.redis_url, "no-cycle")
    auth = {"Authorization": f"Bearer {token}"}
    with app_for(stack) as app:
        assert app.post("/v1/predictions", json=BODY, headers=auth).status_code == 201  # the token seen
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                created = app.post("/v1/predictions", json=BODY, headers=auth)
                assert created.status_code == 201 and created.headers["ratelimit-remaining"], created.text
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cycles = [found for found in gc.garbage if isinstance(found, Request | DeferredAuth)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert counted_checks == [token], "the creates did not leave their token check to their store"
    assert cycles == []
