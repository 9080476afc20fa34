"""A prediction's data deleted early, on the real stack (SeaweedFS listed for what is left): created
with ``retention_s: 0``, once it ended and its ``completed`` webhook was attempted; with ``DELETE
/v1/predictions/{id}`` at once (409 while it runs); a whole batch with ``DELETE /v1/batches/{id}``.
The records stay, showing ``data_removed: true``."""

from __future__ import annotations

import math
import time

import httpx
import pytest
import redis

from shared.batches.records import BATCH_TTL_S
from shared.db import keys
from shared.predictions.retention import Janitor
from shared.storage.objects import batch_prefix, prediction_prefix
from shared.storage.s3 import Storage
from tests.support import assert_problem, data_uri, png_bytes, wait_for_status, wait_until
from tests.support.batches import wait_for_batch
from tests.support.predictions import TERMINAL, depth2img_input
from tests.support.receiver import Received, WebhookReceiver
from tests.support.step_gates import StepGate, wait_until_waiting

pytestmark = pytest.mark.integration

# A noisy image over KILN_INLINE_INPUT_MAX_BYTES (16 KiB): the API stores it in S3 with its prediction.
LARGE_IMAGE = data_uri(png_bytes(128, 96, seed=7))


def stored_keys(stack, prefix: str) -> list[str]:
    storage = Storage(stack.settings())
    listed = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def create(client: httpx.Client, **body: object) -> dict:
    payload = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=LARGE_IMAGE)} | body
    response = client.post("/v1/predictions", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def removed(client: httpx.Client, prediction_id: str) -> dict | None:
    body = client.get(f"/v1/predictions/{prediction_id}").json()
    return body if body["data_removed"] else None


def assert_data_gone(stack, client: httpx.Client, prediction: dict) -> None:
    assert prediction["data_removed"] is True
    assert (prediction["input"], prediction["output"], prediction["logs"]) == ({}, None, "")
    assert stored_keys(stack, prediction_prefix(prediction["id"])) == []
    assert client.get(f"/v1/predictions/{prediction['id']}").json()["data_removed"] is True


def test_retention_zero_keeps_the_outputs_for_the_completed_webhook_then_removes_everything(stack, client):
    fetched: list[int] = []
    janitor = Janitor(redis.Redis.from_url(stack.redis_url), Storage(stack.settings()))

    def fetch_outputs(delivery: Received) -> None:
        """As a receiver would, while the webhook is being delivered; after a sweep of the janitor, which
        removes the data then if it were already due."""
        if delivery.status in TERMINAL:
            janitor.sweep()
            fetched.extend(httpx.get(url).status_code for url in delivery.body["output"])

    with WebhookReceiver(client.get("/v1/webhooks/default/secret").json()["key"]) as receiver:
        receiver.on_delivery = fetch_outputs
        created = create(client, retention_s=0, webhook=receiver.url("/zero"))
        assert created["retention_s"] == 0
        assert stored_keys(stack, prediction_prefix(created["id"])), "its large input is stored in S3"
        wait_until(lambda: any(r.status in TERMINAL for r in receiver.at("/zero")), 120, what="completed webhook")
        gone = wait_until(lambda: removed(client, created["id"]), 60, what="its data removed")
    assert fetched == [200], "the outputs the completed webhook names could still be fetched"
    assert gone["status"] == "succeeded" and gone["retention_s"] == 0
    assert_data_gone(stack, client, gone)


@pytest.mark.parametrize("retention_s", [0, 2])
def test_without_a_webhook_its_retention_removes_everything_that_long_after_it_ended(stack, client, retention_s):
    created = create(client, retention_s=retention_s)
    gone = wait_until(lambda: removed(client, created["id"]), 120, what="its data removed")
    assert gone["status"] == "succeeded" and gone["retention_s"] == retention_s
    assert_data_gone(stack, client, gone)


def test_a_retention_over_kiln_retention_s_or_below_zero_is_a_422_naming_it(stack, client):
    most = stack.settings().retention_s
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input()}
    assert_problem(client.post("/v1/predictions", json=body | {"retention_s": most + 1}), 422, "retention_s", str(most))
    assert_problem(client.post("/v1/predictions", json=body | {"retention_s": -1}), 422, "retention_s")
    results = client.post("/v1/predictions/batch", json={"predictions": [body | {"retention_s": most + 1}]}).json()
    assert results["results"][0]["status"] == 422 and "KILN_RETENTION_S" in results["results"][0]["detail"]


def test_delete_removes_an_ended_predictions_data_at_once_and_again_answers_the_same(stack, client, other_client):
    created = create(client)
    done = wait_for_status(client, created["id"], TERMINAL)
    assert done["status"] == "succeeded" and done["output"]
    assert len(stored_keys(stack, prediction_prefix(created["id"]))) >= 2, "its stored input and its output"
    path = f"/v1/predictions/{created['id']}"
    assert_problem(other_client.delete(path), 404, "not found")
    assert_problem(client.delete("/v1/predictions/no-such-prediction"), 404, "not found")

    deleted = client.delete(path)
    assert deleted.status_code == 200, deleted.text
    assert_data_gone(stack, client, deleted.json())
    assert (deleted.json()["status"], deleted.json()["metrics"]) == ("succeeded", done["metrics"])
    assert client.get(done["output"][0]).status_code == 410

    again = client.delete(path)
    assert again.status_code == 200
    assert {k: v for k, v in again.json().items() if k != "urls"} == {
        k: v for k, v in deleted.json().items() if k != "urls"
    }


def test_delete_is_a_409_while_it_runs_and_works_once_it_was_canceled(stack, client):
    with StepGate(stack.redis_url) as gate:
        created = create(client, input=depth2img_input(prompt=gate.prompt))
        wait_until_waiting(client, created["id"])
        assert_problem(client.delete(f"/v1/predictions/{created['id']}"), 409, "cancel it first")
        assert client.get(f"/v1/predictions/{created['id']}").json()["data_removed"] is False
        client.post(f"/v1/predictions/{created['id']}/cancel")
        wait_for_status(client, created["id"], TERMINAL)
    deleted = client.delete(f"/v1/predictions/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "canceled"
    assert_data_gone(stack, client, deleted.json())


def test_delete_removes_every_items_data_and_the_batchs_shared_inputs_once_every_item_ended(stack, client):
    with StepGate(stack.redis_url) as gate:
        items = [
            {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=LARGE_IMAGE, prompt=prompt)}
            for prompt in (gate.prompt, "another")
        ]
        response = client.post("/v1/batches", json={"predictions": items})
        assert response.status_code == 201, response.text
        batch = response.json()
        assert stored_keys(stack, batch_prefix(batch["id"])), "the image the items share is stored for the batch"
        first = client.get(batch["urls"]["predictions"]).json()["results"]
        gated = next(p for p in first if p["input"]["prompt"] == gate.prompt)
        wait_until_waiting(client, gated["id"])
        assert_problem(client.delete(batch["urls"]["get"]), 409, "cancel it first")
    done = wait_for_batch(client, batch["id"], {"completed", "canceled"})
    assert done["counts"]["succeeded"] == 2 and done["data_removed"] is False

    deleted = client.delete(batch["urls"]["get"])
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data_removed"] is True and deleted.json()["counts"] == done["counts"]
    assert stored_keys(stack, batch_prefix(batch["id"])) == []
    for prediction in client.get(batch["urls"]["predictions"]).json()["results"]:
        assert_data_gone(stack, client, prediction)
    assert client.get(batch["urls"]["get"]).json()["data_removed"] is True
    assert client.delete(batch["urls"]["get"]).json()["data_removed"] is True
    assert_problem(client.delete("/v1/batches/no-such-batch"), 404, "not found")


@pytest.mark.parametrize("removal", ["delete", "retention"])
def test_identical_items_share_one_input_and_its_removal_takes_it_too(stack, client, removal):
    """Identical items keep one copy of their input with the batch (``keys.batch_shared_fields``); each
    item's record showed ``{}`` once its data was removed, but that copy stayed in Redis as long as the
    batch. A DELETE, and the batch's retention once its items' is due, take it too."""
    line = {"version": "kiln/sd2-depth2img", "input": depth2img_input(prompt=f"one prompt, twice, {removal}")}
    created = client.post("/v1/batches", json={"predictions": [line, line]})
    assert created.status_code == 201, created.text
    batch = wait_for_batch(client, created.json()["id"], {"completed"})
    items = client.get(batch["urls"]["predictions"]).json()["results"]
    db = redis.Redis.from_url(stack.redis_url)
    shared = db.keys(keys.batch_shared_fields(batch["id"], 0))
    assert shared and b"twice" in db.hget(shared[0], "input"), "the two items share one stored input"

    if removal == "delete":
        assert client.delete(batch["urls"]["get"]).status_code == 200
    else:
        # The intake schedules it BATCH_TTL_S out; the settler, which may run after the batch reads
        # ``completed``, brings it forward (and would overwrite a due time set before it ran).
        wait_until(
            lambda: (db.zscore(keys.retention(), f"batch:{batch['id']}") or math.inf) < time.time() + BATCH_TTL_S,
            30,
            what="the settler bringing its retention forward",
        )
        due = time.time() - 1
        db.zadd(keys.retention(), {f"prediction:{p['id']}": due for p in items} | {f"batch:{batch['id']}": due})
        Janitor(db, Storage(stack.settings())).sweep()
    # The stack's own janitor (every worker's maintenance loop) may have claimed an entry first: it finishes it.
    wait_until(
        lambda: not db.hexists(shared[0], "input") and not db.hexists(shared[0], "input_files"),
        30,
        what="the shared input removed",
    )
    for item in items:
        assert client.get(f"/v1/predictions/{item['id']}").json()["input"] == {}
    assert db.hexists(shared[0], "version"), "what the records still show stays shared"
