"""Webhooks end to end: a real receiver on loopback, the webhook Celery worker, retries and restarts."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from deploy.devstack.servers import free_port
from shared.db import keys
from shared.webhooks.outbox import completed_message_id
from tests.support import wait_for_status, wait_until
from tests.support.predictions import TERMINAL, create_with_webhook, depth2img_input
from tests.support.receiver import HoldingReceiver, WebhookReceiver
from tests.support.stack import TOKEN_A, WEBHOOK_SENDING_PER_TENANT, WEBHOOK_THREADS
from tests.support.step_gates import StepGate

pytestmark = pytest.mark.integration


@pytest.fixture
def secret(client) -> str:
    key = client.get("/v1/webhooks/default/secret").json()["key"]
    assert key.startswith("whsec_")
    return key


@pytest.fixture
def receiver(secret) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret) as r:
        yield r


def unsigned(prediction: dict) -> dict:
    urls = prediction["urls"] | {"stream": prediction["urls"]["stream"].split("?")[0]}
    return prediction | {"output": [url.split("?")[0] for url in prediction["output"] or []], "urls": urls}


def test_filter_order_signature_and_body_equal_to_get(client, receiver):
    created = create_with_webhook(client, receiver.url("/basic"), ["start", "completed"])
    wait_until(lambda: any(r.status in TERMINAL for r in receiver.at("/basic")), 60, what="the completed webhook")
    time.sleep(1.0)  # anything the filter should have dropped would arrive by now
    got = receiver.at("/basic")
    assert [r.status for r in got] == ["processing", "succeeded"], [r.status for r in got]
    assert receiver.bad_signatures == 0
    assert got[0].at <= got[1].at
    # Each rendering signs its output URLs afresh (they expire): equal but for their signatures.
    assert unsigned(got[1].body) == unsigned(client.get(f"/v1/predictions/{created['id']}").json())
    assert got[1].body["output"] and all("expires=" in url for url in got[1].body["output"])
    assert got[0].headers["webhook-id"] != got[1].headers["webhook-id"]


def test_all_events_by_default_with_logs_throttled(client, receiver):
    created = create_with_webhook(
        client, receiver.url("/all"), width=64, height=64, num_inference_steps=150, prompt_strength=1.0
    )
    # 150 steps take about 1.5 s on a quiet CPU and over two minutes at a load of 10 on two cores.
    done = wait_for_status(client, created["id"], TERMINAL, timeout=600)
    wait_until(lambda: any(r.status in TERMINAL for r in receiver.at("/all")), 30, what="the completed webhook")
    got = receiver.at("/all")
    statuses = [r.status for r in got]
    assert statuses[0] == "processing" and statuses[-1] == "succeeded"
    with_output = [r for r in got if r.status == "processing" and r.body["output"]]
    assert len(with_output) == 1, "one output event"
    log_events = [r for r in got[1:-1] if not r.body["output"]]
    steps = done["logs"].count("it/s]") + done["logs"].count("s/it]")
    run_time = done["metrics"]["predict_time"]
    assert steps == 150
    # At most one logs event per 500 ms, yet some while it ran.
    assert 1 <= len(log_events) <= math.ceil(run_time / 0.5) + 1, (len(log_events), run_time)


def test_failed_attempts_are_retried_with_the_same_webhook_id(client, receiver):
    receiver.script("/flaky", [500, 500])
    create_with_webhook(client, receiver.url("/flaky"), ["completed"])
    wait_until(lambda: len(receiver.at("/flaky")) >= 3, 60, what="three attempts")
    time.sleep(1.5)
    got = receiver.at("/flaky")
    assert len(got) == 3, "delivered on the third try and not again"
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert all(r.status == "succeeded" for r in got)


def test_a_delete_during_the_retries_leaves_them_nothing_it_removed(stack, client, receiver):
    """DELETE while the ``completed`` message is being retried: the next attempts carry the record as it is
    now (``data_removed``, no input, output or logs), and nothing in Redis still holds what was removed."""
    deleted: list[float] = []

    def delete_during_the_first(delivery) -> None:
        if not deleted:
            with stack.client(TOKEN_A) as owner:
                assert owner.delete(f"/v1/predictions/{delivery.body['id']}").status_code == 200
            deleted.append(time.monotonic())

    receiver.on_delivery = delete_during_the_first
    receiver.script("/flaky", [500, 500])
    created = create_with_webhook(client, receiver.url("/flaky"), ["completed"], prompt="a secret of its own")
    wait_until(lambda: len(receiver.at("/flaky")) >= 3, 60, what="three attempts")
    first, *retries = receiver.at("/flaky")
    assert first.body["input"]["prompt"] == "a secret of its own" and first.body["output"]
    for retry in retries:
        assert retry.at > deleted[0]
        assert retry.body["data_removed"] is True
        assert (retry.body["input"], retry.body["output"], retry.body["logs"]) == ({}, None, "")
    with redis.Redis.from_url(stack.redis_url) as db:
        kept = db.hgetall(keys.webhook_delivery(completed_message_id(created["id"])))
    assert kept and not any(b"a secret of its own" in value for value in kept.values())
    assert client.get(f"/v1/predictions/{created['id']}").json()["data_removed"] is True


def test_410_stops_retries_and_redirects_are_failures_not_followed(client, receiver):
    receiver.script("/gone", [410])
    receiver.script("/moved", [302, 302])
    create_with_webhook(client, receiver.url("/gone"), ["completed"])
    create_with_webhook(client, receiver.url("/moved"), ["completed"])
    wait_until(lambda: len(receiver.at("/moved")) >= 3, 60, what="the redirected delivery to be retried")
    time.sleep(1.5)
    assert len(receiver.at("/gone")) == 1
    assert receiver.at("/redirected") == []
    assert len(receiver.at("/moved")) == 3


def test_receiver_down_and_webhook_worker_restarted_loses_nothing(stack, client, secret):
    port = free_port()
    url = f"http://127.0.0.1:{port}/late"
    created = create_with_webhook(client, url, ["completed"])
    wait_for_status(client, created["id"], TERMINAL)
    time.sleep(1.0)  # at least one attempt failed against the closed port
    stack.restart_webhook_worker()
    with WebhookReceiver(secret, port=port) as late:
        wait_until(lambda: late.at("/late"), 60, what="the completed webhook after the receiver came back")
        assert late.at("/late")[0].body["id"] == created["id"]
        assert late.at("/late")[0].status == "succeeded"


def test_cancel_of_a_queued_prediction_sends_completed(stack, client, receiver):
    with StepGate(stack.redis_url) as gate:  # the blocker runs until it is canceled
        blocker = client.post(
            "/v1/predictions",
            json={
                "version": "kiln/sd2-depth2img",
                "input": depth2img_input(
                    prompt=gate.prompt, width=64, height=64, num_inference_steps=500, prompt_strength=1.0
                ),
            },
        ).json()
        queued = create_with_webhook(client, receiver.url("/queued-cancel"))
        client.post(f"/v1/predictions/{queued['id']}/cancel")
        client.post(f"/v1/predictions/{blocker['id']}/cancel")
    wait_until(lambda: receiver.at("/queued-cancel"), 30, what="the completed webhook")
    assert [r.status for r in receiver.at("/queued-cancel")] == ["canceled"]


def test_a_tenant_whose_receivers_never_answer_leaves_a_webhook_thread_to_the_others(stack, client, other_client):
    """Tenant A's ``completed`` messages, as many as the webhook worker has threads, go to a receiver that
    never answers (each attempt held until the timeout): A holds no more than its places
    (``KILN_WEBHOOK_SENDING_PER_TENANT``), and tenant B's message goes out while A's are all still held."""
    secret_b = other_client.get("/v1/webhooks/default/secret").json()["key"]
    with HoldingReceiver() as holding, WebhookReceiver(secret_b) as receiver, StepGate(stack.redis_url) as gate:
        blocker = client.post(
            "/v1/predictions",
            json={"version": "kiln/sd2-depth2img", "input": depth2img_input(prompt=gate.prompt, width=64, height=64)},
        ).json()
        try:
            # Canceled while queued behind the blocker: their completed messages are due at once.
            for index in range(WEBHOOK_THREADS):
                held = create_with_webhook(client, holding.url(f"/held{index}"), ["completed"])
                client.post(f"/v1/predictions/{held['id']}/cancel")
            wait_until(lambda: holding.open == WEBHOOK_SENDING_PER_TENANT, 30, what="tenant A's attempts held")
            other = create_with_webhook(other_client, receiver.url("/b"), ["completed"])
            other_client.post(f"/v1/predictions/{other['id']}/cancel")
            wait_until(lambda: receiver.at("/b"), 30, what="tenant B's completed message")
            assert holding.ended == 0, "tenant B's message waited for one of tenant A's attempts to give up"
            assert holding.most_open == WEBHOOK_SENDING_PER_TENANT
            # A's message that waited is woken as soon as one of A's attempts ends (at the 5 s timeout), not
            # left until its claim would lapse (60 s).
            every = {f"/held{index}" for index in range(WEBHOOK_THREADS)}
            wait_until(lambda: holding.paths >= every, 20, what="tenant A's waiting message, woken")
        finally:
            client.post(f"/v1/predictions/{blocker['id']}/cancel")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://[::1]/hook", "http://169.254.169.254/latest"]
)
def test_private_webhook_urls_are_a_422_when_not_allowed(stack, url):
    with TestClient(create_app(stack.settings(webhook_allow_private=False))) as c:
        response = c.post(
            "/v1/predictions",
            headers={"Authorization": f"Bearer {TOKEN_A}"},
            json={"version": "kiln/sd2-depth2img", "input": depth2img_input(), "webhook": url},
        )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("webhook:")
