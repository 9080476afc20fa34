"""Celery queue names and priorities. One GPU queue per model family, so a worker loads one family's weights.

Each GPU queue is split by priority (kombu's Redis transport keeps one list per step of
``PRIORITY_STEPS`` and pops them in order), so interactive creates overtake batch backlogs and the
low-priority lane waits for all of them; see docs/scheduling.md. How many predictions wait in each is
counted in ``shared.scheduling.queue_counters``, and where each stands in ``shared.scheduling.queue_lines``.
"""

from typing import Literal

SD2_DEPTH = "gpu.sd2-depth"
SDXL = "gpu.sdxl"
WEBHOOKS = "webhooks"
GPU_QUEUES = (SD2_DEPTH, SDXL)

PREDICT_TASK = "kiln.predict"
DELIVER_WEBHOOK_TASK = "kiln.deliver_webhook"

# kombu's Redis transport: a lower number is served first; priorities round down to these steps.
PRIORITY_STEPS = [0, 3, 6, 8, 9]
# Single creates (someone is waiting on each).
PRIORITY_INTERACTIVE = 0
# Items of ``/v1/batches``, released by Kiln's dispatcher (``shared.scheduling.dispatcher``) a few at a time in a
# fair order: behind interactive work, ahead of the inline batch form's backlog.
PRIORITY_DISPATCHED = 3
# Batch items queue behind every interactive prediction.
PRIORITY_BATCH = 6
# A tenant's batch items beyond its first ``KILN_BATCH_HEAVY_AFTER`` queued ones: other tenants'
# batches overtake a large backlog instead of waiting for all of it (docs/scheduling.md).
PRIORITY_BATCH_HEAVY = 8
# The low-priority lane (``priority: "low"``): released by the dispatcher, round-robin over tenants, only
# while none of the steps above holds anything, into the last step, which a worker pops last.
PRIORITY_LOW = 9
# A prediction put back after a worker died or shut down already waited its turn once.
PRIORITY_REQUEUE = PRIORITY_INTERACTIVE
# The steps normal work uses: a low prediction waits until all of them are empty.
NORMAL_STEPS = [step for step in PRIORITY_STEPS if step != PRIORITY_LOW]
# The steps Kiln's dispatcher feeds, taking tenants in turn; the others are first come, first served.
ROUND_ROBIN_STEPS = (PRIORITY_DISPATCHED, PRIORITY_LOW)

# What a create asks for (its ``priority`` field, or the ``Kiln-Priority`` header).
Priority = Literal["normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("normal", "low")

# kombu's Redis transport keeps priority step 0 of a queue in the list named like the queue and
# step p > 0 in "<queue>\x06\x16<p>" (its Channel.sep). Queue depth, and KEDA's scaler, sum them all.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"


def priority_lists(queue: str) -> dict[int, str]:
    """The Redis list holding each priority step of ``queue``'s waiting messages."""
    return {step: queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS}


def batch_priority(position: int, heavy_after: int) -> int:
    """Priority of a batch item that is its tenant's ``position``-th queued prediction (from 0)."""
    return PRIORITY_BATCH if position < heavy_after else PRIORITY_BATCH_HEAVY


# How a low lane's name ends: "<family>:low".
LOW_LANE_SUFFIX = ":low"


def dispatch_lane(family: str, step: int) -> str:
    """The name of the dispatcher lane feeding ``step`` of ``family`` (in its keys and claims): the family
    itself for ``PRIORITY_DISPATCHED`` (as before the low lane existed), ``<family>:low`` for ``PRIORITY_LOW``."""
    return family + LOW_LANE_SUFFIX if step == PRIORITY_LOW else family


def lane_step(lane: str) -> tuple[str, int]:
    """``(family, step)`` of a dispatcher lane's name."""
    if lane.endswith(LOW_LANE_SUFFIX):
        return lane.removesuffix(LOW_LANE_SUFFIX), PRIORITY_LOW
    return lane, PRIORITY_DISPATCHED
