"""What ``queue_position`` costs at a deep queue (``shared.scheduling.queue_lines``): the Redis bytes the
tickets add to each queued record, and the time of one position read and of a list page's, with and
without tickets skipped by queued cancels.

It starts a redis-server, stores ``--queued`` compact records (as the batch intake stores them) in one
line and gives them tickets, then reads positions. Usage: ``python -m tools.bench_queue_positions
[--queued N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from deploy.devstack.servers import RedisServer
from shared.predictions.record import Prediction, new_ids
from shared.predictions.store import PredictionStore
from shared.scheduling import queues

CHUNK = 5000
FAMILY, LINE = queues.SD2_DEPTH, queues.PRIORITY_BATCH


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100_000, help="queued predictions (default 100,000)")
    return parser.parse_args(argv)


def timed_ms(call: Callable[[], object], rounds: int) -> float:
    """The median time of ``call``, in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(store: PredictionStore, count: int) -> list[tuple[str, str]]:
    db = store.redis
    template = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={"prompt": "x"})
    fields = {name: value for name, value in template.to_compact_hash().items() if name != "id"}
    ids = new_ids(count)
    before = db.info("memory")["used_memory"]
    for start in range(0, count, CHUNK):
        store.create_records([(fields, ids[start : start + CHUNK])], lambda pipe: None)
    stored = db.info("memory")["used_memory"]
    for start in range(0, count, CHUNK):
        with db.pipeline(transaction=True) as pipe:
            store.lines.enter_in_pipeline(pipe, FAMILY, LINE, "t1", ids[start : start + CHUNK])
            pipe.execute()
    ticketed = db.info("memory")["used_memory"]
    last, page = store.get(ids[-1]), store.get_many(ids[-100:])
    assert last is not None and store.lines.position(last) == count - 1
    rows = [
        ("record (compact, queued)", f"{(stored - before) / count:.0f} B"),
        ("its ticket (queue_line, queue_ticket)", f"{(ticketed - stored) / count:.0f} B"),
        ("one position read, p50", f"{timed_ms(lambda: store.lines.position(last), 200):.3f} ms"),
        (
            "a page of 100 positions (one round trip), p50",
            f"{timed_ms(lambda: store.lines.positions(page), 50):.2f} ms",
        ),
    ]
    skipped = ids[: count // 5 : 2]
    store.request_cancel_many(skipped)
    assert store.lines.position(last) == count - 1 - len(skipped)
    rows.append(
        (
            f"one read with {len(skipped):,} tickets skipped ahead, p50",
            f"{timed_ms(lambda: store.lines.position(last), 200):.3f} ms",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = RedisServer(Path(tempfile.mkdtemp(prefix="kiln-bench-")), appendonly=False)
    with server, redis.Redis.from_url(server.url) as db:
        rows = measure(PredictionStore(db), args.queued)
    sys.stdout.write(f"| {args.queued:,} queued | |\n|---|---|\n")
    sys.stdout.write("".join(f"| {name} | {value} |\n" for name, value in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
