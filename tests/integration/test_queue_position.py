"""Queue positions and the low-priority lane on the real stack: a queued prediction's
``queue_position`` counts down as the ones ahead of it start (in its JSON, in lists, in the stream's
``status`` events), and is right for batch items and low-priority work, which waits behind normal work
of its own token and of others (``priority`` in the body, or the ``Kiln-Priority`` header)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import redis

from shared.scheduling import queues
from tests.support import assert_problem, wait_for_status, wait_until
from tests.support.batches import all_predictions, item
from tests.support.predictions import depth2img_input
from tests.support.step_gates import StepGate, wait_until_waiting
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration

MODEL = "kiln/sd2-depth2img"
FAMILY = queues.SD2_DEPTH


@pytest.fixture
def client(stack) -> Iterator[httpx.Client]:
    with client_for(stack.base_url, new_token(stack.redis_url, "queue")[1]) as queue_client:
        yield queue_client


@pytest.fixture
def other_client(stack) -> Iterator[httpx.Client]:
    with client_for(stack.base_url, new_token(stack.redis_url, "queue-other")[1]) as queue_client:
        yield queue_client


def wait_until_idle(stack) -> None:
    """Nothing of the family waits: no queued prediction, and no message (an earlier test's canceled ones)
    left in its Celery lists, so the positions this test reads are its own predictions'."""
    with redis.Redis.from_url(stack.redis_url) as db:

        def idle() -> bool:
            lists = queues.priority_lists(FAMILY).values()
            return not db.hget("kiln:queued:by_family", FAMILY) and not any(db.llen(name) for name in lists)

        wait_until(idle, 120, what=f"{FAMILY} to have nothing queued")


def create(client: httpx.Client, prompt: str = "a kiln", headers: dict | None = None, **body) -> dict:
    body = {"version": MODEL, "input": depth2img_input(prompt=prompt, width=64, height=64)} | body
    response = client.post("/v1/predictions", json=body, headers=headers or {})
    assert response.status_code == 201, response.text
    return response.json()


def positions(client: httpx.Client, predictions: list[dict]) -> list[int | None]:
    return [client.get(f"/v1/predictions/{p['id']}").json()["queue_position"] for p in predictions]


def all_listed(client: httpx.Client) -> dict[str, int | None]:
    """Every prediction of the token, by id: its ``queue_position`` as ``GET /v1/predictions`` pages show it."""
    found, url = {}, "/v1/predictions"
    while url:
        page = client.get(url).json()
        found |= {p["id"]: p["queue_position"] for p in page["results"]}
        url = page["next"]
    return found


def started(prediction: dict) -> datetime:
    return datetime.fromisoformat(prediction["started_at"].replace("Z", "+00:00"))


class StatusEvents:
    """The ``status`` events of a prediction's stream (``?kiln_status=true``), read in a thread until
    ``done``."""

    def __init__(self, client: httpx.Client, prediction_id: str) -> None:
        self.seen: list[dict] = []
        self._path = f"/v1/predictions/{prediction_id}/stream"
        self._client = client
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        event = ""
        with self._client.stream("GET", self._path, params={"kiln_status": "true"}, timeout=300) as response:
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "status":
                    self.seen.append(json.loads(line.removeprefix("data: ")))

    def wait_for(self, status: str, queue_position: int | None) -> None:
        wanted = {"status": status, "queue_position": queue_position}
        wait_until(lambda: wanted in self.seen, 60, what=f"a status event {wanted} (seen {self.seen})")

    def join(self) -> None:
        self._reader.join(120)


def test_a_queued_predictions_position_counts_down_as_the_ones_ahead_start(stack, client):
    wait_until_idle(stack)
    with StepGate(stack.redis_url) as running, StepGate(stack.redis_url) as one, StepGate(stack.redis_url) as two:
        blocker = create(client, prompt=running.prompt)
        wait_until_waiting(client, blocker["id"])  # the family's only worker is busy until the gate opens
        queued = [create(client, prompt=one.prompt), create(client, prompt=two.prompt), create(client)]
        assert [p["queue_position"] for p in queued] == [0, 1, 2]  # each create's own answer
        assert [p["priority"] for p in queued] == ["normal"] * 3
        assert positions(client, queued) == [0, 1, 2]
        listed = all_listed(client)
        assert [listed[p["id"]] for p in [blocker, *queued]] == [None, 0, 1, 2]  # the blocker runs
        last = StatusEvents(client, queued[2]["id"])
        last.wait_for("starting", 2)

        running.open()
        wait_until_waiting(client, queued[0]["id"])
        assert positions(client, queued) == [None, 0, 1]
        last.wait_for("starting", 1)

        one.open()
        wait_until_waiting(client, queued[1]["id"])
        assert positions(client, queued) == [None, None, 0]
        last.wait_for("starting", 0)

        two.open()
        done = wait_for_status(client, queued[2]["id"], {"succeeded"})
    last.join()
    assert done["queue_position"] is None
    assert {"status": "succeeded", "queue_position": None} in last.seen
    queued_events = [e["queue_position"] for e in last.seen if e["status"] == "starting"]
    assert queued_events == sorted(queued_events, reverse=True)  # it only counted down


def test_batch_items_and_low_priority_work_wait_their_turn_across_tokens(stack, client, other_client):
    wait_until_idle(stack)
    with StepGate(stack.redis_url) as gate:
        blocker = create(client, prompt=gate.prompt)
        wait_until_waiting(client, blocker["id"])
        low_in_body = create(client, priority="low")
        low_by_header = create(client, headers={"Kiln-Priority": "LOW"})
        normal = create(client)
        inline = client.post("/v1/predictions/batch", json={"predictions": [item(1), item(2)]}).json()["results"]
        assert [p["queue_position"] for p in inline] == [1, 2]  # behind the single create, ahead of low work
        batch = client.post("/v1/batches", json={"predictions": [item(3), item(4)]})
        assert batch.status_code == 201, batch.text
        batch_items = all_predictions(client, batch.json())
        theirs = create(other_client)
        theirs_low = create(other_client, headers={"Kiln-Priority": "low"})

        mine = [low_in_body, low_by_header, normal, *inline, *batch_items]
        assert [p["priority"] for p in mine] == ["low", "low"] + ["normal"] * 5
        assert theirs_low["priority"] == "low"
        # Single creates first, then /v1/batches items, then inline batch items; then the low lane, where
        # the tokens take turns (the other token, new to the lane, first: its first item waits for the one
        # already released).
        expected = [normal, theirs, *batch_items, *inline, low_in_body, theirs_low, low_by_header]
        owners = [client, other_client, client, client, client, client, client, other_client, client]
        assert [positions(c, [p])[0] for c, p in zip(owners, expected, strict=True)] == list(range(9))
        assert [p["queue_position"] for p in all_predictions(client, batch.json())] == [2, 3]
        gate.open()
        done = [wait_for_status(c, p["id"], {"succeeded"}) for c, p in zip(owners, expected, strict=True)]
    order = sorted(range(len(done)), key=lambda index: started(done[index]))
    assert order == list(range(len(done))), [expected[i]["id"] for i in order]


def test_a_priority_that_is_not_one_is_refused_naming_it_and_the_body_wins_over_the_header(client):
    body = {"version": MODEL, "input": depth2img_input(width=64, height=64)}
    assert_problem(client.post("/v1/predictions", json=body | {"priority": "urgent"}), 422, "priority")
    for header in ("urgent", "1.5", "low, normal", ""):
        refused = client.post("/v1/predictions", json=body, headers={"Kiln-Priority": header})
        assert_problem(refused, 400, "Kiln-Priority")
    twice = [("Kiln-Priority", "low"), ("Kiln-Priority", "normal")]
    assert_problem(client.post("/v1/predictions", json=body, headers=twice), 400, "Kiln-Priority", "more than once")
    assert_problem(client.post("/v1/batches", json={"predictions": [item()], "priority": "high"}), 422, "priority")
    assert_problem(
        client.post("/v1/predictions/batch", json={"predictions": [item()]}, headers={"Kiln-Priority": "-1"}),
        400,
        "Kiln-Priority",
    )
    normal = create(client, priority="normal", headers={"Kiln-Priority": "low"})
    assert normal["priority"] == "normal"
    wait_for_status(client, normal["id"], {"succeeded"})
