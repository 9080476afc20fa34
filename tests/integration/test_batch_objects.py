"""Batches as objects (``/v1/batches``) on the real stack: counts, one webhook, the results file,
cancel, a 20,000-line input file, and the dispatcher's fair start order across two tenants."""

from __future__ import annotations

import itertools
import json
import secrets
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import redis

from shared.db import keys
from shared.predictions.retention import Janitor
from shared.storage.objects import batch_prefix
from shared.storage.s3 import Storage
from tests.support import data_uri, png_bytes, wait_until
from tests.support.batches import all_predictions, item, results_of, tiny_image, wait_for_batch
from tests.support.receiver import WebhookReceiver
from tests.support.step_gates import StepGate, wait_until_waiting
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def client(stack) -> Iterator[httpx.Client]:
    """A tenant of these tests alone: a batch adds thousands of predictions to its tenant's list,
    which other tests page through two at a time."""
    with client_for(stack.base_url, new_token(stack.redis_url, "batches")[1]) as batches_client:
        yield batches_client


@pytest.fixture
def other_client(stack) -> Iterator[httpx.Client]:
    with client_for(stack.base_url, new_token(stack.redis_url, "batches-other")[1]) as batches_client:
        yield batches_client


@pytest.fixture
def receiver(client) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(client.get("/v1/webhooks/default/secret").json()["key"]) as r:
        yield r


def started(prediction: dict) -> datetime:
    return datetime.fromisoformat(prediction["started_at"].replace("Z", "+00:00"))


def test_a_small_batch_runs_to_completion_with_one_webhook_and_its_results_in_order(client, other_client, receiver):
    items = [item(1), item(2, input={"prompt": "x", "input_image": tiny_image(), "num_inference_steps": 0}), item(3)]
    items += [item(4), item(5)]
    body, key = {"predictions": items, "webhook": receiver.url("/batch")}, {"Idempotency-Key": secrets.token_hex(8)}
    created = client.post("/v1/batches", json=body, headers=key)
    assert created.status_code == 201, created.text
    batch = created.json()
    again = client.post("/v1/batches", json=body, headers=key)
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == batch["id"]
    assert client.post("/v1/batches", json={"predictions": items[:1]}, headers=key).status_code == 409
    assert batch["status"] in {"queued", "running"}
    assert batch["counts"]["total"] == 5 and batch["counts"]["invalid"] == 1
    assert set(batch["urls"]) >= {"get", "cancel", "predictions", "results"}
    assert other_client.get(batch["urls"]["get"]).status_code == 404
    assert other_client.get(batch["urls"]["results"]).status_code == 404

    done = wait_for_batch(client, batch["id"], {"completed", "canceled"})
    assert done["status"] == "completed" and done["completed_at"]
    assert done["counts"]["succeeded"] == 4 and done["counts"]["starting"] == done["counts"]["processing"] == 0

    wait_until(lambda: receiver.at("/batch"), 60, what="the batch webhook")
    # Its items' own completions all happened before it; nothing may add a second one.
    assert wait_for_batch(client, batch["id"], {"completed"})["counts"]["succeeded"] == 4
    got = receiver.at("/batch")
    assert len(got) == 1 and receiver.bad_signatures == 0
    assert got[0].body["id"] == batch["id"] and got[0].body["status"] == "completed"
    assert got[0].body["counts"]["succeeded"] == 4

    lines = results_of(client, done)
    assert [line["line"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[1]["status"] == "invalid" and "input.num_inference_steps" in lines[1]["error"]
    valid = [line for line in lines if line["status"] != "invalid"]
    assert all(line["status"] == "succeeded" and line["output"] and line["metrics"] for line in valid)
    predictions = all_predictions(client, done)
    assert [p["id"] for p in predictions] == [line["id"] for line in valid]
    assert [p["input"]["seed"] for p in predictions] == [1, 3, 4, 5]
    assert client.get("/v1/batches").json()["results"][0]["id"] == batch["id"]


def test_cancel_ends_every_item_and_the_batch_canceled_with_one_webhook(stack, client, receiver):
    with StepGate(stack.redis_url) as gate:
        items = [item(seed, input=item(seed)["input"] | {"prompt": gate.prompt}) for seed in range(12)]
        created = client.post("/v1/batches", json={"predictions": items, "webhook": receiver.url("/canceled")})
        assert created.status_code == 201, created.text
        batch = created.json()
        # One item runs (waiting at its gate), the others wait in the queue.
        wait_until(
            lambda: client.get(batch["urls"]["get"]).json()["counts"]["processing"] == 1, 120, what="an item to run"
        )
        canceled = client.post(batch["urls"]["cancel"])
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["counts"]["canceled"] >= 10
        # The running item ends at its gate: the gate stays closed until then, or an item whose
        # last step was done when the gate opened could finish before it saw the cancel.
        done = wait_for_batch(client, batch["id"], {"completed", "canceled"})
    assert done["status"] == "canceled"
    assert done["counts"]["canceled"] == 12 and done["counts"]["total"] == 12
    assert {line["status"] for line in results_of(client, done)} == {"canceled"}
    wait_until(lambda: receiver.at("/canceled"), 60, what="the batch webhook")
    assert client.post(batch["urls"]["cancel"]).json()["status"] == "canceled"  # again: nothing changes
    got = receiver.at("/canceled")
    assert len(got) == 1 and got[0].body["status"] == "canceled" and got[0].body["counts"]["canceled"] == 12


def test_a_worker_killed_mid_item_still_ends_the_batch_once_with_one_webhook(stack, client, receiver):
    """The killed item runs again (a second attempt) and ends once: the batch's counts stay exact,
    and it completes, with one webhook, exactly once."""
    with StepGate(stack.redis_url) as gate:
        gated = item(0, input=item(0)["input"] | {"prompt": gate.prompt})
        body = {"predictions": [gated, item(1), item(2)], "webhook": receiver.url("/killed")}
        batch = client.post("/v1/batches", json=body).json()
        first = all_predictions(client, batch)[0]
        wait_until_waiting(client, first["id"])
        with stack.gpu_worker_down(signal.SIGKILL):
            gate.open()
        done = wait_for_batch(client, batch["id"], {"completed", "canceled"})
    assert done["status"] == "completed"
    assert done["counts"]["succeeded"] == 3 and done["counts"]["starting"] == done["counts"]["processing"] == 0
    assert "Running again (attempt 2)" in client.get(f"/v1/predictions/{first['id']}").json()["logs"]
    wait_until(lambda: receiver.at("/killed"), 60, what="the batch webhook")
    time.sleep(2)  # a second webhook would come from another settler or a retried item: none may
    got = receiver.at("/killed")
    assert len(got) == 1 and got[0].body["counts"]["succeeded"] == 3


def test_a_20000_line_input_file_is_accepted_with_right_counts(client, other_client):
    image = client.post("/v1/files", files={"content": ("ref.png", png_bytes(64, 64), "image/png")})
    assert image.status_code == 201, image.text
    line = {"model": "kiln/ip-adapter-depth-xl", "input": {"prompt": "p", "input_image": image.json()["urls"]["get"]}}
    line["input"] |= {"ip_image": image.json()["urls"]["get"], "num_inference_steps": 1}
    lines = [json.dumps(line)] * 20_000
    bad = {7: "{not json", 5_000: json.dumps({"model": "kiln/nope", "input": {}}), 19_999: "[1, 2]"}
    for number, text in bad.items():
        lines[number - 1] = text
    upload = client.post(
        "/v1/files", files={"content": ("batch.jsonl", "\n".join(lines).encode(), "application/jsonl")}
    )
    assert upload.status_code == 201, upload.text
    file_url = upload.json()["urls"]["get"]
    assert other_client.post("/v1/batches", json={"input_file": file_url}).status_code == 422

    created = client.post("/v1/batches", json={"input_file": file_url}, timeout=300)
    assert created.status_code == 201, created.text
    batch = created.json()
    try:
        counts = batch["counts"]
        assert (counts["total"], counts["invalid"]) == (20_000, 3)
        assert sum(counts[s] for s in ("starting", "processing", "succeeded", "failed", "canceled")) == 19_997
        assert client.get("/v1/queue").json()["queued"] > 0
        refused = [r for r in results_of(client, batch) if r["status"] == "invalid"]
        assert [r["line"] for r in refused] == sorted(bad)
        assert "not JSON" in refused[0]["error"] and "kiln/nope" in refused[1]["error"]
    finally:
        client.post(batch["urls"]["cancel"], timeout=600)
    assert wait_for_batch(client, batch["id"], {"canceled", "completed"})["counts"]["canceled"] > 0


def test_the_dispatcher_starts_another_tenants_batch_within_two_jobs(client, other_client):
    backlog = client.post("/v1/batches", json={"predictions": [item(seed) for seed in range(40)]}).json()
    try:
        wait_until(
            lambda: client.get(backlog["urls"]["get"]).json()["counts"]["succeeded"] >= 2, 300, what="the backlog"
        )
        second = other_client.post("/v1/batches", json={"predictions": [item(seed) for seed in range(3)]})
        assert second.status_code == 201, second.text
        done = wait_for_batch(other_client, second.json()["id"], {"completed"})
        submitted = datetime.fromisoformat(done["created_at"].replace("Z", "+00:00"))
        theirs = sorted(started(p) for p in all_predictions(other_client, done))
        ours = [started(p) for p in all_predictions(client, backlog) if p["started_at"]]
        # Before its first item: at most the job running at submission and the one waiting in Celery.
        assert sum(1 for s in ours if submitted < s < theirs[0]) <= 2
        # Then round-robin: at most one of the backlog's between two of its items (and the waiting one).
        for earlier, later in itertools.pairwise(theirs):
            assert sum(1 for s in ours if earlier < s < later) <= 2
        assert len(ours) < 40  # the backlog had not drained: the fair order was tested against it
    finally:
        client.post(backlog["urls"]["cancel"])


def test_items_sharing_a_large_image_keep_it_until_the_batch_goes(stack, client):
    """Identical items share one stored copy of their large image, owned by the batch: one item's
    retention clears that item's input only, and the copy goes with the batch."""
    line = item(seed=5)
    line["input"]["input_image"] = data_uri(png_bytes(256, 256, seed=12))  # over the inline limit
    created = client.post("/v1/batches", json={"predictions": [line, line]})
    assert created.status_code == 201, created.text
    batch_id = created.json()["id"]
    batch = wait_for_batch(client, batch_id, {"completed"})
    first, second = all_predictions(client, batch)
    assert (first["status"], second["status"]) == ("succeeded", "succeeded"), (first["error"], second["error"])
    reference = first["input"]["input_image"]
    assert f"/v1/batches/{batch_id}/inputs/" in reference and second["input"]["input_image"] == reference
    assert client.get(reference).content == png_bytes(256, 256, seed=12), "served to the batch's owner"

    db = redis.Redis.from_url(stack.redis_url)
    assert len(db.hget(keys.batch_shared_fields(batch_id, 0), "input") or b"") < 1024, "a reference, not the image"
    storage = Storage(stack.settings())

    def stored() -> int:
        return storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=batch_prefix(batch_id)).get("KeyCount", 0)

    assert stored() == 1, "one copy for the batch"
    janitor = Janitor(db, storage)
    db.zadd(keys.retention(), {f"prediction:{first['id']}": time.time() - 1})
    janitor.sweep()  # or the stack's own janitor claims it first: wait for the outcome either way

    def removed() -> dict | None:
        body = client.get(f"/v1/predictions/{first['id']}").json()
        return body if body.get("data_removed") else None

    assert wait_until(removed, 60, what="retention of the first item")["input"] == {}
    kept = client.get(f"/v1/predictions/{second['id']}").json()
    assert kept["input"]["input_image"] == reference and not kept.get("data_removed")
    assert stored() == 1, "the other item still needs the batch's copy"

    db.zadd(keys.retention(), {f"batch:{batch_id}": time.time() - 1})
    janitor.sweep()
    wait_until(lambda: stored() == 0, 60, what="the batch's stored inputs deleted")
