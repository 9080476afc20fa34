"""Prediction ids: never the same twice, whatever the concurrency (calls in one millisecond, threads,
forked processes), and sorting in the order they were made."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter

import pytest
from ulid import ULID

from shared.predictions import record as prediction
from shared.predictions.record import new_id, new_ids

ROUNDS = 2000
# A millisecond long past, for the tests that stop the clock.
PAST_MS = 1_600_000_000_000


@pytest.fixture(autouse=True)
def fresh_generator():
    """Each test starts from a generator that has handed out nothing (a stopped clock leaves none behind)."""
    prediction._IDS.forget()
    yield
    prediction._IDS.forget()


def overlaps(ranges: list[list[str]]) -> int:
    return sum(n - 1 for n in Counter(i for ids in ranges for i in ids).values() if n > 1)


def test_two_calls_in_one_millisecond_never_share_an_id():
    pairs = [(new_ids(3), new_ids(3)) for _ in range(ROUNDS)]

    same_millisecond = [(a, b) for a, b in pairs if a[0][:10] == b[0][:10]]
    assert len(same_millisecond) > ROUNDS // 2  # the case under test did happen
    assert overlaps([ids for pair in pairs for ids in pair]) == 0


def test_calls_from_many_threads_never_share_an_id():
    found: list[list[str]] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        mine = [new_ids(n % 7 + 1) for n in range(500)] + [[new_id()] for _ in range(200)]
        found.extend(mine)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(map(len, found)) == 8 * (sum(n % 7 + 1 for n in range(500)) + 200)
    assert overlaps(found) == 0


def _ids_in_child(queue: multiprocessing.Queue) -> None:
    queue.put(new_ids(1000) + [new_id() for _ in range(10)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked processes")
def test_a_forked_process_does_not_count_on_from_its_parents_ids(monkeypatch):
    # One stopped millisecond, and a child whose random draws fall below its parent's: were it to keep
    # its parent's state, it would count on from the parent's last id, as the parent does.
    parent_pid = os.getpid()
    monkeypatch.setattr(prediction, "_now_ms", lambda: PAST_MS)
    monkeypatch.setattr(prediction.secrets, "randbits", lambda bits: 1 << 60 if os.getpid() == parent_pid else 0)
    parent = new_ids(5)
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_ids_in_child, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(timeout=30)
    from_parent = parent + new_ids(1000) + [new_id() for _ in range(10)]

    assert overlaps([from_parent, from_child]) == 0


def test_ids_sort_in_the_order_they_were_made():
    made = [i for n in range(3000) for i in (new_ids(n % 5 + 1) if n % 2 else [new_id()])]

    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_keep_their_order_within_a_millisecond_and_when_the_clock_steps_back(monkeypatch):
    clock = iter([PAST_MS + 5] * 3 + [PAST_MS + 1] * 3)
    monkeypatch.setattr(prediction, "_now_ms", lambda: next(clock))

    made = [i for _ in range(6) for i in new_ids(1500)]

    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_an_id_is_a_lowercase_ulid_of_its_creation_time():
    before = int(time.time() * 1000)
    made = new_ids(2000)
    after = int(time.time() * 1000)

    for found in (new_id(), made[0], made[1023], made[1024], made[-1]):
        assert len(found) == 26 and found == found.lower()
        assert before <= int(ULID.from_str(found.upper()).milliseconds) <= after + 1
    numbers = [int(ULID.from_str(i.upper())) for i in made]
    assert numbers == list(range(numbers[0], numbers[0] + len(made)))  # one range: consecutive numbers
