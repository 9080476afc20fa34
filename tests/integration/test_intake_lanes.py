"""A token's slow image URLs hold nothing but that token's own intake slots (``api.lanes``): while
tenant A's 40 creates wait on image URLs that trickle a byte at a time, tenant B's reads and creates on
the same API process are answered, all of them before the first of A's fetches gives up."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import wait_until
from tests.support.image_servers import ImageServer
from tests.support.predictions import depth2img_input
from tests.support.stack import TOKEN_A, TOKEN_B, Stack, extra_api

pytestmark = pytest.mark.integration

FETCH_TIMEOUT_S = 8
SLOW_CREATES = 40


@pytest.fixture
def api_url(stack: Stack) -> Iterator[str]:
    """An API process that may fetch images from loopback, with a fetch time limit the test can outlast."""
    settings = {
        "KILN_IMAGE_FETCH_ALLOW_PRIVATE": "true",
        "KILN_IMAGE_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "KILN_RATE_LIMIT_BURST": "1000",
    }
    with extra_api(stack, settings, "api-lanes") as url:
        yield url


def test_one_tokens_trickling_image_urls_never_hold_another_tokens_requests(api_url) -> None:
    answered_a: list[float] = []
    with ImageServer("127.0.0.1", trickle=True) as trickler:
        slow = {"version": "kiln/sd2-depth2img", "input": depth2img_input() | {"input_image": trickler.url("/x.png")}}

        def slow_create() -> None:
            with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120) as a:
                response = a.post("/v1/predictions", json=slow)
            assert response.status_code == 422 and "timed out" in response.text, response.text
            answered_a.append(time.monotonic())

        threads = [threading.Thread(target=slow_create, daemon=True) for _ in range(SLOW_CREATES)]
        for thread in threads:
            thread.start()
        wait_until(lambda: trickler.hits >= 10, 30, what="A's fetches to be in flight")

        took: list[float] = []
        with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN_B}"}, timeout=60) as b:
            for _ in range(20):
                started = time.monotonic()
                assert b.get("/v1/predictions").status_code == 200
                took.append(time.monotonic() - started)
            started = time.monotonic()
            created = b.post("/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": depth2img_input()})
            assert created.status_code == 201, created.text
            took.append(time.monotonic() - started)
            b_done = time.monotonic()
            b.post(created.json()["urls"]["cancel"])
        for thread in threads:
            thread.join(timeout=5 * FETCH_TIMEOUT_S)
    assert len(answered_a) == SLOW_CREATES
    # Every request of B's was answered while A's fetches still trickled (none had given up yet).
    assert b_done < min(answered_a), (took, b_done, min(answered_a))
    print(
        f"\nB's requests under A's {SLOW_CREATES} trickling fetches: median {statistics.median(took) * 1000:.0f} ms, "
        f"max {max(took) * 1000:.0f} ms"
    )
