"""``make bench``'s Redis section: what a queued prediction costs Redis, and that it all goes away.

On the bench stack (run with short ``KILN_RETENTION_S`` / ``KILN_RECORD_RETENTION_S`` /
``KILN_JANITOR_INTERVAL_S``, see ``REDIS_SETTINGS``):

1. ``used_memory`` before and after ``count`` predictions, each with a ~200 KiB data-URI image
   (PNG noise), created one per request and then in batches; the delta over the count is the bytes
   of Redis per queued prediction: record, tenant-list entry, Celery message, counters. The goal is
   2 KiB plus the prompt. They target ``kiln/ip-adapter-depth-xl``, which no bench worker runs.
2. Every one of them (and the warm-up's) canceled through the API (a terminal status, so retention and record expiry
   are scheduled), their Celery messages dropped (a worker would pop and skip them), then
   ``used_memory`` again once the janitor has emptied the retention set: back at the baseline.
   What is not is split into Redis's own overhead (clients, scripts, the keyspace's tables) and the
   key families (a key's name with its ids as ``*``) that hold more keys or bytes than at the baseline.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import redis
from PIL import Image

from shared.db import keys
from shared.scheduling import queues
from tests.support import data_uri, wait_until
from tests.support.stack import TOKEN_A

# The stack settings the section needs: data gone 10 s after a prediction ends, the record 20 s after.
REDIS_SETTINGS = {"KILN_RETENTION_S": "10", "KILN_RECORD_RETENTION_S": "20", "KILN_JANITOR_INTERVAL_S": "1"}
PROMPT = "a kiln at dusk, bench"
MODEL = "kiln/ip-adapter-depth-xl"
# A batch body (each item carries the image twice: input_image, ip_image) stays under the 32 MiB cap.
BATCH_SIZE = 50


def noise_png_uri(target_bytes: int = 200 * 1024) -> str:
    """A data URI of about ``target_bytes`` characters: PNG noise (which does not compress)."""
    side = int(((target_bytes * 3 / 4) / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


@dataclass
class RedisBytes:
    count: int
    image_chars: int
    single_per_prediction: float
    batch_per_prediction: float
    record_bytes: int
    baseline: int
    peak: int
    after_expiry: int
    expiry_wait_s: float
    overhead_growth: dict[str, int]
    families_left: dict[str, tuple[int, int]]


def used_memory(client: redis.Redis) -> int:
    info = client.info("memory")
    return int(info["used_memory"])


def _settled_memory(client: redis.Redis) -> int:
    """used_memory once Redis's lazy frees and the allocator have settled (the least of a few reads)."""
    readings = []
    for _ in range(5):
        time.sleep(0.2)
        readings.append(used_memory(client))
    return min(readings)


# INFO memory's parts that are not the dataset: what Redis holds for clients, scripts and its own tables.
OVERHEAD_FIELDS = (
    "used_memory_dataset",
    "used_memory_overhead",
    "mem_clients_normal",
    "used_memory_scripts",
    "mem_replication_backlog",
    "mem_aof_buffer",
)
_ID_PART = re.compile(r"^(?=.*\d)[0-9A-Za-z_-]{12,}$")


def family(key: bytes) -> str:
    """A key's family: its name with every id-like part (12 or more characters with a digit) as ``*``."""
    return ":".join("*" if _ID_PART.match(part) else part for part in key.decode(errors="replace").split(":"))


def key_families(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per key family: how many keys, and their bytes (``MEMORY USAGE``, sampled)."""
    families: dict[str, tuple[int, int]] = {}
    for key in client.scan_iter(count=1000):
        name = family(key)
        count, size = families.get(name, (0, 0))
        families[name] = (count + 1, size + int(client.memory_usage(key, samples=5) or 0))
    return families


def grown(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The families with more keys or bytes ``after`` than ``before``: (keys added, bytes added)."""
    return {
        name: (count - before.get(name, (0, 0))[0], size - before.get(name, (0, 0))[1])
        for name, (count, size) in sorted(after.items())
        if count > before.get(name, (0, 0))[0] or size > before.get(name, (0, 0))[1]
    }


def overhead(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    return {name: int(info.get(name, 0)) for name in OVERHEAD_FIELDS}


def _in_parallel(count: int, task: Callable[[httpx.Client, int], list[str]], threads: int = 8) -> list[str]:
    ids: list[str] = []
    with ThreadPoolExecutor(threads) as pool:

        def run(worker: int) -> list[str]:
            with httpx.Client(headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120) as client:
                return [i for n in range(worker, count, threads) for i in task(client, n)]

        for found in pool.map(run, range(threads)):
            ids.extend(found)
    return ids


def create_single(base_url: str, count: int, image: str) -> list[str]:
    body = {"input": {"prompt": PROMPT, "input_image": image, "ip_image": image}}

    def one(client: httpx.Client, _: int) -> list[str]:
        response = client.post(f"{base_url}/v1/models/{MODEL}/predictions", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"create answered {response.status_code}: {response.text[:300]}")
        return [response.json()["id"]]

    return _in_parallel(count, one)


def create_batches(base_url: str, count: int, image: str) -> list[str]:
    item = {"model": MODEL, "input": {"prompt": PROMPT, "input_image": image, "ip_image": image}}
    batches = [min(BATCH_SIZE, count - start) for start in range(0, count, BATCH_SIZE)]

    def one(client: httpx.Client, index: int) -> list[str]:
        response = client.post(f"{base_url}/v1/predictions/batch", json={"predictions": [item] * batches[index]})
        results = response.json()["results"] if response.status_code == 200 else []
        if response.status_code != 200 or any("id" not in r for r in results):
            raise RuntimeError(f"batch answered {response.status_code}: {response.text[:300]}")
        return [r["id"] for r in results]

    return _in_parallel(len(batches), one, threads=2)


def cancel_all(base_url: str, ids: list[str]) -> None:
    def one(client: httpx.Client, index: int) -> list[str]:
        response = client.post(f"{base_url}/v1/predictions/{ids[index]}/cancel")
        if response.status_code != 200:
            raise RuntimeError(f"cancel answered {response.status_code}: {response.text[:300]}")
        return []

    _in_parallel(len(ids), one)


def drop_queued_messages(client: redis.Redis) -> None:
    """The canceled predictions' Celery messages: a worker would pop each and skip it."""
    for step in queues.PRIORITY_STEPS:
        client.delete(queues.SDXL if step == 0 else f"{queues.SDXL}\x06\x16{step}")


def _retention_done(client: redis.Redis) -> bool:
    """Nothing left for the janitor within the hour: the measured predictions' data and records are
    due seconds after their cancel (``REDIS_SETTINGS``); what other sections left (uploaded files, a
    batch object's shared inputs) is due a day or more later and is not part of this measure."""
    return client.zcount(keys.retention(), "-inf", time.time() + 3600) == 0


def measure(base_url: str, redis_url: str, count: int, log: Callable[[str], None]) -> RedisBytes:
    image = noise_png_uri()
    client = redis.Redis.from_url(redis_url)
    # Warm-up: code paths, connections, the tenant's keys. Canceled with the rest at the end: a prediction left
    # queued would hold the tickets canceled after it (``keys.queue_line_skipped``) until it starts.
    warm_ids = create_single(base_url, 20, image)
    baseline = _settled_memory(client)
    baseline_overhead, baseline_families = overhead(client), key_families(client)
    log(f"redis: {count} single creates with a {len(image) // 1024} KiB data-URI image each")
    single_ids = create_single(base_url, count, image)
    after_single = _settled_memory(client)
    log(f"redis: {count} batch items, {BATCH_SIZE} per batch")
    batch_ids = create_batches(base_url, count, image)
    peak = _settled_memory(client)
    record_bytes = int(client.memory_usage(keys.prediction(single_ids[0])) or 0)
    log("redis: canceling them all, then waiting for retention and record expiry")
    cancel_all(base_url, warm_ids + single_ids + batch_ids)
    drop_queued_messages(client)
    started = time.monotonic()
    wait_until(lambda: _retention_done(client), 600, interval=1, what="the janitor to finish")
    waited = time.monotonic() - started
    client.close()
    client = redis.Redis.from_url(redis_url)
    after = _settled_memory(client)
    after_overhead = overhead(client)
    return RedisBytes(
        count=count,
        image_chars=len(image),
        single_per_prediction=(after_single - baseline) / count,
        batch_per_prediction=(peak - after_single) / count,
        record_bytes=record_bytes,
        baseline=baseline,
        peak=peak,
        after_expiry=after,
        expiry_wait_s=waited,
        overhead_growth={name: after_overhead[name] - baseline_overhead[name] for name in OVERHEAD_FIELDS},
        families_left=grown(baseline_families, key_families(client)),
    )


def table(result: RedisBytes) -> str:
    goal = 2048 + len(PROMPT)
    rows = [
        ("Redis bytes per queued prediction, single creates", f"{result.single_per_prediction:,.0f}", f"<= {goal:,}"),
        ("Redis bytes per queued prediction, batch creates", f"{result.batch_per_prediction:,.0f}", f"<= {goal:,}"),
        ("one prediction record (MEMORY USAGE of its hash)", f"{result.record_bytes:,}", ""),
        ("used_memory: baseline / all queued (MiB)", f"{result.baseline / 2**20:.1f} / {result.peak / 2**20:.1f}", ""),
        (
            "used_memory after retention + record expiry (MiB)",
            f"{result.after_expiry / 2**20:.1f} ({(result.after_expiry - result.baseline) / 1024:+,.0f} KiB)",
            "= baseline",
        ),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    note = (
        f"{result.count:,} single + {result.count:,} batch predictions ({BATCH_SIZE}/batch), each with a "
        f"{result.image_chars / 1024:.0f} KiB data-URI image (input_image and ip_image) and a "
        f"{len(PROMPT)}-character prompt; expiry settings {json.dumps(REDIS_SETTINGS)}; the janitor emptied "
        f"the retention set {result.expiry_wait_s:.0f} s after the cancels."
    )
    growth = ", ".join(f"{name} {delta / 1024:+,.0f} KiB" for name, delta in result.overhead_growth.items())
    left = "; ".join(
        f"{name}: {count:+,} keys, {size / 1024:+,.0f} KiB" for name, (count, size) in result.families_left.items()
    )
    where = [f"after expiry against the baseline: {growth}", f"key families grown: {left or 'none'}"]
    return "\n".join([*lines, note, *where])
