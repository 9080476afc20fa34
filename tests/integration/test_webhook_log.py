"""The webhook delivery log on the real stack: a receiver down past the (shortened) retry schedule leaves
failed messages, listed with their attempts by the tenant's failed list and by their prediction's and
batch's ``/webhooks``; a retry, once the receiver is back, delivers them signed with the tenant's secret
under the same ``webhook-id``; another tenant can neither see nor retry them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.views import webhook_deliveries
from shared.db import keys
from tests.support import assert_problem, wait_until
from tests.support.batches import item
from tests.support.predictions import app_for, create_with_webhook
from tests.support.receiver import WebhookReceiver
from tests.support.stack import WEBHOOK_RETRY_SCHEDULE_S
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
FAILED = "/v1/webhooks/deliveries"
# Every attempt of a spent schedule: the first and one per retry.
ATTEMPTS = len(WEBHOOK_RETRY_SCHEDULE_S) + 1


@pytest.fixture
def client(stack) -> Iterator[httpx.Client]:
    """A tenant of its own: its failed list holds this test's messages only."""
    _, token = new_token(stack.redis_url, "webhook-log")
    with client_for(stack.base_url, token) as c:
        yield c


def every_failed(client: httpx.Client, **query: str) -> list[dict]:
    """Every page of the tenant's failed messages (the stack's pages hold two)."""
    found, response = [], client.get(FAILED, params={"state": "failed", **query})
    while True:
        assert response.status_code == 200, response.text
        found += response.json()["results"]
        if response.json()["next"] is None:
            return found
        response = client.get(response.json()["next"])


def messages(client: httpx.Client, path: str) -> list[dict]:
    response = client.get(f"{path}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_failed_messages_are_listed_with_their_attempts_and_a_retry_delivers_them_signed(client, other_client):
    began = datetime.now(UTC) - timedelta(seconds=1)
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver:
        receiver.down_for(3600)
        prediction = create_with_webhook(client, receiver.url("/log"), ["start", "completed"])
        batch = client.post("/v1/batches", json={"predictions": [item()], "webhook": receiver.url("/batch-log")})
        assert batch.status_code == 201, batch.text
        batch = batch.json()
        prediction_path, batch_path = f"/v1/predictions/{prediction['id']}", f"/v1/batches/{batch['id']}"

        # While its schedule runs, the completed message is pending: a retry is a 409.
        pending = wait_until(
            lambda: [m for m in messages(client, prediction_path) if m["event"] == "completed"], 120, what="completed"
        )[0]
        if pending["state"] == "pending":
            assert_problem(client.post(f"{FAILED}/{pending['id']}/retry"), 409, "pending")

        failed = wait_until(lambda: len(every_failed(client)) == 2 and every_failed(client), 240, what="2 failures")
        log = messages(client, prediction_path)
        assert [(m["event"], m["state"]) for m in log] == [("start", "failed"), ("completed", "failed")]
        start, completed = log
        assert len(start["attempts"]) == 1, "progress events get one attempt"
        assert [a["status_code"] for a in completed["attempts"]] == [503] * ATTEMPTS
        assert all(a["error"] is None and a["duration_ms"] >= 0 for a in completed["attempts"])
        assert completed["next_attempt_at"] is None and completed["url"] == receiver.url("/log")
        assert completed["prediction_id"] == prediction["id"]
        (batch_message,) = messages(client, batch_path)
        assert (batch_message["state"], batch_message["batch_id"]) == ("failed", batch["id"])
        assert {m["id"] for m in failed} == {completed["id"], batch_message["id"]}
        assert every_failed(client, since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
        assert every_failed(client, until=began.isoformat()) == []
        assert_problem(client.post(f"{FAILED}/{start['id']}/retry"), 409, "only completed messages")

        # Another tenant sees none of it and retries none of it.
        for path in (prediction_path, batch_path):
            assert_problem(other_client.get(f"{path}/webhooks"), 404, "not found")
        assert not {m["id"] for m in every_failed(other_client)} & {completed["id"], batch_message["id"]}
        assert_problem(other_client.post(f"{FAILED}/{completed['id']}/retry"), 404, "not found")
        assert other_client.post(f"{FAILED}/retry", json={"state": "failed"}).status_code == 202
        assert {m["id"] for m in every_failed(client)} == {completed["id"], batch_message["id"]}

        receiver.down_for(0)
        retried = client.post(f"{FAILED}/{completed['id']}/retry")
        assert retried.status_code == 202, retried.text
        # Pending again as the answer was read; a webhook thread may have delivered it already by then.
        answered = retried.json()
        assert (answered["state"], len(answered["attempts"])) in {("pending", ATTEMPTS), ("delivered", ATTEMPTS + 1)}
        wait_until(lambda: receiver.at("/log"), 60, what="the retried message")
        (sent,) = receiver.at("/log")
        assert receiver.bad_signatures == 0, "verified with the tenant's secret (Standard Webhooks)"
        assert sent.headers["webhook-id"] == completed["id"]
        assert (sent.body["id"], sent.status) == (prediction["id"], "succeeded")
        assert sent.body["output"] and all("expires=" in url for url in sent.body["output"])
        delivered = wait_until(
            lambda: [m for m in messages(client, prediction_path) if m["state"] == "delivered"], 60, what="delivered"
        )[0]
        assert [a["status_code"] for a in delivered["attempts"]] == [503] * ATTEMPTS + [200]
        assert [m["id"] for m in every_failed(client)] == [batch_message["id"]]

        # The rest, as the `kiln webhooks retry` command sends it.
        answer = client.post(f"{FAILED}/retry", json={"state": "failed", "since": began.isoformat()})
        assert (answer.status_code, answer.json()) == (202, {"retried": 1, "remaining": 0})
        wait_until(lambda: receiver.at("/batch-log"), 60, what="the retried batch message")
        (sent,) = receiver.at("/batch-log")
        assert (sent.headers["webhook-id"], sent.body["id"]) == (batch_message["id"], batch["id"])
        wait_until(lambda: messages(client, batch_path)[0]["state"] == "delivered", 60, what="batch delivered")
        assert every_failed(client) == [] and receiver.bad_signatures == 0


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"state": "delivered"}, "state"),
        ({"since": "yesterday"}, "since"),
        ({"until": "0001-01-01T00:00:00+14:00"}, "until"),
    ],
)
def test_bad_list_filters_are_a_400_naming_them(client, query, name):
    assert_problem(client.get(FAILED, params=query), 400, name)


@pytest.mark.parametrize(("body", "name"), [({"state": "pending"}, "state"), ({"since": "soon"}, "since")])
def test_bad_retry_filters_are_a_422_naming_them(client, body, name):
    assert_problem(client.post(f"{FAILED}/retry", json=body), 422, name)


def test_unknown_messages_and_subjects_are_a_404(client):
    assert_problem(client.post(f"{FAILED}/msg_nothing/retry"), 404, "not found")
    assert_problem(client.post(f"{FAILED}/{'x' * 5000}/retry"), 404, "not found")
    assert_problem(client.get("/v1/predictions/nothing/webhooks"), 404, "not found")
    assert_problem(client.get("/v1/batches/nothing/webhooks"), 404, "not found")


def test_a_retry_racing_its_records_expiry_is_a_404_not_pending(stack, client, monkeypatch):
    """The record expires between the retry reading it and sending the message again: the message is gone,
    so the answer is the expired message's 404, not a 409 saying it is pending."""
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver:
        receiver.script("/gone", [410])  # 410 stops the schedule: failed at once
        prediction = create_with_webhook(client, receiver.url("/gone"), ["completed"])
        path = f"/v1/predictions/{prediction['id']}"
        message = wait_until(
            lambda: [m for m in messages(client, path) if m["state"] == "failed"], 60, what="the failed message"
        )[0]
    read_body = webhook_deliveries.current_body

    def expiring_meanwhile(services, delivery):
        body = read_body(services, delivery)
        services.redis.delete(keys.webhook_delivery(delivery.id))  # the record expired just after it was read
        return body

    monkeypatch.setattr(webhook_deliveries, "current_body", expiring_meanwhile)
    with app_for(stack) as app:
        answer = app.post(f"{FAILED}/{message['id']}/retry", headers=dict(client.headers))
    assert_problem(answer, 404, "its record expired")
