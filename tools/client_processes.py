"""Load from client processes, started together: what ``make bench``'s sections hammer the API with.

Each is a spawned process running ``target(*args, start, out)``: it makes what it sends, waits on ``start``
(a barrier the caller passes too) and puts one result on ``out``. Plain ``http.client`` connections in
separate processes: an asyncio client in one process (httpx's AsyncClient) turned out to be the
bottleneck itself, collapsing with concurrency.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any


def run_clients(
    target: Callable[..., None], args: Sequence[tuple[Any, ...]], seconds: float
) -> tuple[list[Any], float]:
    """One process per entry of ``args``; their results, and the seconds from the barrier to the last result."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start = context.Barrier(len(args) + 1)
    clients = [context.Process(target=target, args=(*own, start, out)) for own in args]
    for client in clients:
        client.start()
    start.wait(timeout=120)
    started = time.monotonic()
    results = [out.get(timeout=seconds + 300) for _ in clients]
    elapsed = time.monotonic() - started
    for client in clients:
        client.join()
    return results, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
