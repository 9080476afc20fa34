"""``Cancel-After`` end to end: a deadline reached in the queue ends the prediction ``aborted`` (the
worker that receives it later drops it); reached while it runs, ``canceled`` at the next step."""

from __future__ import annotations

import httpx
import pytest
import replicate
from prometheus_client.parser import text_string_to_metric_families
from pydantic import v1 as pydantic_v1

from tests.support import assert_problem, wait_for_status, wait_until
from tests.support.predictions import canceled_at_its_deadline, depth2img_input
from tests.support.receiver import WebhookReceiver
from tests.support.step_gates import StepGate, wait_until_waiting
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
MODEL = "kiln/sd2-depth2img"


@pytest.fixture
def token(stack) -> str:
    """A tenant of these tests alone: replicate-python 1.0.7 cannot parse an ``aborted`` prediction,
    so one in tenant A's list would break every later test that lists A's predictions with it."""
    return new_token(stack.redis_url, "deadlines")[1]


@pytest.fixture
def client(stack, token):
    with client_for(stack.base_url, token) as deadlines_client:
        yield deadlines_client


def create(client, cancel_after: str | None = None, **body) -> dict:
    headers = {"Cancel-After": cancel_after} if cancel_after else {}
    body = {"version": MODEL, "input": depth2img_input()} | body
    response = client.post("/v1/predictions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_deadline_reached_in_the_queue_aborts_it_and_the_worker_drops_it(stack, client):
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver, StepGate(stack.redis_url) as gate:
        # The only sd2-depth worker is busy until the gate opens.
        blocker = create(client, input=depth2img_input(prompt=gate.prompt))
        wait_until_waiting(client, blocker["id"])
        queued = create(client, "2s", webhook=receiver.url("/aborted"), webhook_events_filter=["completed"])
        assert queued["deadline"] > queued["created_at"]
        aborted = wait_for_status(client, queued["id"], {"aborted"}, timeout=60)
        assert aborted["started_at"] is None and aborted["completed_at"] and aborted["output"] is None
        wait_until(lambda: receiver.at("/aborted"), 60, what="the completed webhook of the aborted prediction")
        assert receiver.at("/aborted")[-1].status == "aborted"
        gate.open()
        wait_for_status(client, blocker["id"], {"succeeded"})
    # The worker then received the aborted one's message and dropped it without running it.
    log = stack.logs / "gpu-worker.log"
    wait_until(
        lambda: any(queued["id"] in line and "dropping" in line for line in log.read_text().splitlines()),
        60,
        what="the worker to drop the aborted prediction",
    )
    again = client.get(f"/v1/predictions/{queued['id']}").json()
    assert (again["status"], again["started_at"], again["logs"]) == ("aborted", None, "")
    # Counted as finished by whichever worker process's deadline job aborted it.
    assert sum(aborted_count(port) for port in stack.metrics_ports.values()) >= 1


def aborted_count(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kiln_predictions_finished_total" and sample.labels.get("status") == "aborted"
    )


def test_a_deadline_reached_while_running_cancels_it_at_the_next_step(stack, client):
    with StepGate(stack.redis_url) as gate:
        canceled = canceled_at_its_deadline(
            client, lambda cancel_after: create(client, cancel_after, input=depth2img_input(prompt=gate.prompt))["id"]
        )
    assert canceled["status"] == "canceled" and canceled["started_at"]
    assert "Deadline reached (Cancel-After)" in canceled["logs"]


@pytest.mark.parametrize("value", ["5 minutes", "-5s", "0s", "1d", "soon"])
def test_a_bad_cancel_after_is_a_400_naming_the_header_and_stores_nothing(client, value):
    before = client.get("/v1/predictions").json()["results"]
    response = client.post(
        "/v1/predictions", json={"version": MODEL, "input": depth2img_input()}, headers={"Cancel-After": value}
    )
    assert_problem(response, 400, "Cancel-After")
    assert client.get("/v1/predictions").json()["results"][:1] == before[:1]


def test_cancel_after_sets_every_inline_batch_items_deadline_and_a_batch_object_refuses_it(client):
    """Both batch routes dropped the header: items ran with no deadline, whatever it said."""
    items = [{"version": MODEL, "input": depth2img_input(seed=seed)} for seed in (1, 2)]
    created = client.post("/v1/predictions/batch", json={"predictions": items}, headers={"Cancel-After": "1h"})
    assert created.status_code == 200, created.text
    for prediction in created.json()["results"]:
        assert prediction["deadline"] is not None, prediction
        client.post(f"/v1/predictions/{prediction['id']}/cancel")
    before = client.get("/v1/predictions").json()["results"][:1]
    refused = client.post("/v1/predictions/batch", json={"predictions": items}, headers={"Cancel-After": "169h"})
    assert_problem(refused, 400, "Cancel-After")
    assert_problem(
        client.post("/v1/batches", json={"predictions": items}, headers={"Cancel-After": "1h"}),
        400,
        "Cancel-After: a batch object takes none",
    )
    assert client.get("/v1/predictions").json()["results"][:1] == before
    assert client.get("/v1/batches").json()["results"] == []


def test_the_official_python_client_with_a_cancel_after_header(stack, client, token):
    """replicate-python sends no Cancel-After of its own; a client made with the header sends it on
    every request. A deadline reached while running ends the prediction canceled, as the client
    knows it; one reached in the queue ends it aborted, a status 1.0.7 cannot parse."""
    with StepGate(stack.redis_url) as gate:
        created = []

        def create_with_the_client(cancel_after: str) -> str:
            rc = replicate.Client(api_token=token, base_url=stack.base_url, headers={"Cancel-After": cancel_after})
            created.append(rc.predictions.create(model=MODEL, input=depth2img_input(prompt=gate.prompt)))
            return created[-1].id

        assert canceled_at_its_deadline(client, create_with_the_client)["status"] == "canceled"
        prediction = created[-1]
        prediction.wait()
    assert prediction.status == "canceled"
    assert client.get(f"/v1/predictions/{prediction.id}").json()["deadline"]
    with StepGate(stack.redis_url) as gate:
        blocker = create(client, input=depth2img_input(prompt=gate.prompt))
        wait_until_waiting(client, blocker["id"])
        quick = replicate.Client(api_token=token, base_url=stack.base_url, headers={"Cancel-After": "1s"})
        queued = quick.predictions.create(model=MODEL, input=depth2img_input())
        assert wait_for_status(client, queued.id, {"aborted"}, timeout=60)["started_at"] is None
        with pytest.raises(pydantic_v1.ValidationError):
            queued.reload()
