"""``api.lanes``: creates run on threads of their own, at most ``per_token`` of them per token at once;
a token over its share waits without holding a thread, and another token's work runs meanwhile."""

from __future__ import annotations

import asyncio
import threading

from api.lanes import Lanes
from tests.support import run_on_own_loop


def test_a_token_holds_at_most_its_share_and_another_token_is_not_held() -> None:
    lanes = Lanes(threads=8, per_token=2)
    release = threading.Event()
    running: dict[str, int] = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}
    lock = threading.Lock()

    def work(tenant: str) -> str:
        with lock:
            running[tenant] += 1
            most[tenant] = max(most[tenant], running[tenant])
        if tenant == "a":
            release.wait(10)  # a slow image URL
        with lock:
            running[tenant] -= 1
        return tenant

    async def scenario() -> tuple[list[str], int]:
        slow = [asyncio.create_task(lanes.run("a", work, "a")) for _ in range(6)]
        await asyncio.sleep(0.2)
        waiting = lanes.in_flight("a")
        # A's six creates hold two threads; B's are answered while they wait.
        assert await asyncio.gather(*(lanes.run("b", work, "b") for _ in range(3))) == ["b", "b", "b"]
        release.set()
        return await asyncio.gather(*slow), waiting

    done, waiting = run_on_own_loop(asyncio.wait_for(scenario(), timeout=20))
    assert done == ["a"] * 6 and waiting == 6
    assert most == {"a": 2, "b": most["b"]} and 1 <= most["b"] <= 2
    assert lanes.in_flight("a") == 0 and lanes._lanes == {}
