"""Batch objects at their edges, on the real stack: lines nested past any sane depth, a batch larger
than its token's queue cap, a cancel while the file is still being validated, the shared inputs'
retention, and the signed URLs of those inputs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from shared.db import keys
from shared.predictions.retention import Janitor
from shared.storage.objects import batch_prefix
from shared.storage.s3 import Storage
from tests.support import data_uri, png_bytes, wait_until
from tests.support.batches import all_predictions, item, results_of, wait_for_batch
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration


@pytest.fixture
def client(stack) -> Iterator[httpx.Client]:
    """A tenant of these tests alone (a batch fills its tenant's lists)."""
    with client_for(stack.base_url, new_token(stack.redis_url, "edges")[1]) as edges_client:
        yield edges_client


def upload_jsonl(client: httpx.Client, lines: list[str]) -> str:
    upload = client.post("/v1/files", files={"content": ("b.jsonl", "\n".join(lines).encode(), "application/jsonl")})
    assert upload.status_code == 201, upload.text
    return upload.json()["urls"]["get"]


def test_a_line_nested_too_deep_is_one_refused_line_and_the_rest_run(client):
    deep_field = item(1)
    deep_field["input"]["extra"] = "@"
    lines = [json.dumps(item(0)), "[" * 100_000, json.dumps(deep_field).replace('"@"', "[" * 5000 + "]" * 5000)]
    created = client.post("/v1/batches", json={"input_file": upload_jsonl(client, [*lines, json.dumps(item(2))])})
    assert created.status_code == 201, created.text
    batch = created.json()
    assert (batch["counts"]["total"], batch["counts"]["invalid"]) == (4, 2)
    refused = [line for line in results_of(client, batch) if line["status"] == "invalid"]
    assert [line["line"] for line in refused] == [2, 3]
    assert all("nested deeper than" in line["error"] for line in refused), refused
    assert wait_for_batch(client, batch["id"], {"completed"})["counts"]["succeeded"] == 2


def test_file_metadata_nested_too_deep_is_refused_and_nothing_is_stored(client):
    before = client.get("/v1/files").json()["results"]
    deep = "[" * 5000 + "]" * 5000
    response = client.post(
        "/v1/files", files={"content": ("a.txt", b"a", "text/plain")}, data={"metadata": '{"a": ' + deep + "}"}
    )
    assert response.status_code == 422, response.text
    assert "metadata" in response.json()["detail"] and "nested deeper than" in response.json()["detail"]
    assert client.get("/v1/files").json()["results"] == before


def test_non_finite_numbers_in_an_inline_item_refuse_it_as_the_same_line_of_a_file(client):
    """Items were re-encoded with orjson, which writes NaN and Infinity as null: they ran as if unset."""
    bad = [item(1), item(2), item(3) | {"retention_s": float("-inf")}]
    bad[0]["input"]["seed"], bad[1]["input"]["seed"] = float("nan"), float("inf")
    for source in ("inline", "file"):
        lines = [json.dumps(entry) for entry in (item(0), *bad)]  # the stdlib writes NaN, Infinity, -Infinity
        body = '{"predictions": [' + ", ".join(lines) + "]}" if source == "inline" else None
        created = (
            client.post("/v1/batches", content=body, headers={"content-type": "application/json"})
            if body
            else client.post("/v1/batches", json={"input_file": upload_jsonl(client, lines)})
        )
        assert created.status_code == 201, created.text
        batch = created.json()
        assert (batch["counts"]["total"], batch["counts"]["invalid"]) == (4, 3), (source, batch)
        refused = [line for line in results_of(client, batch) if line["status"] == "invalid"]
        assert [line["line"] for line in refused] == [2, 3, 4], refused
        for field, line in zip(("seed", "seed", "retention_s"), refused, strict=True):
            assert field in line["error"], (source, line)
        assert wait_for_batch(client, batch["id"], {"completed"})["counts"]["succeeded"] == 1


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/v1/batches", {"predictions": []}, "predictions: no items"),
        ("/v1/predictions/batch", {"predictions": []}, "predictions: no items"),
        ("/v1/batches", "", "input_file: no lines"),
        ("/v1/batches", "\n \r\n\t\n", "input_file: no lines"),
    ],
    ids=["inline", "predictions-batch", "empty-file", "blank-file"],
)
def test_a_batch_of_nothing_is_a_422_and_nothing_is_stored(client, path, body, detail):
    """It was stored as a completed batch of 0 items."""
    if isinstance(body, str):
        upload = client.post("/v1/files", files={"content": ("b.jsonl", body.encode(), "application/jsonl")})
        body = {"input_file": upload.json()["urls"]["get"]}
    response = client.post(path, json=body)
    assert response.status_code == 422 and detail in response.json()["detail"], response.text
    assert client.get("/v1/batches").json()["results"] == []
    assert client.get("/v1/predictions").json()["results"] == []


def test_a_batch_larger_than_the_tokens_queue_cap_says_it_can_never_fit(stack):
    with client_for(stack.base_url, new_token(stack.redis_url, "capped", max_queued=3)[1]) as capped:
        queue = capped.get("/v1/queue").json()
        assert (queue["queued"], queue["max_queued"]) == (0, 3)
        response = capped.post("/v1/batches", json={"predictions": [item(seed) for seed in range(4)]})
        assert response.status_code == 422, response.text
        assert "Retry-After" not in response.headers
        detail = response.json()["detail"]
        assert "4 predictions" in detail and "at most 3" in detail, detail
        assert capped.get("/v1/batches").json()["results"] == []


def test_a_cancel_while_the_file_is_validated_wins(client):
    """Distinct lines, so validation takes a while: the cancel lands while the batch is validating;
    no item is queued afterwards, and the batch ends canceled."""
    lines = [json.dumps(item(seed, input=item(seed)["input"] | {"prompt": f"p{seed}"})) for seed in range(20_000)]
    file_url = upload_jsonl(client, lines)
    answer: dict[str, httpx.Response] = {}
    creating = threading.Thread(
        target=lambda: answer.update(created=client.post("/v1/batches", json={"input_file": file_url}, timeout=300))
    )
    creating.start()

    def validating() -> dict | None:
        found = client.get("/v1/batches").json()["results"]
        return found[0] if found and found[0]["status"] == "validating" else None

    batch = wait_until(validating, 60, interval=0.02, what="the batch to be validating")
    canceled = client.post(batch["urls"]["cancel"])
    assert canceled.status_code == 200, canceled.text
    creating.join(300)
    assert answer["created"].status_code == 201, answer["created"].text
    done = wait_for_batch(client, batch["id"], {"canceled", "completed"}, timeout=120)
    assert done["status"] == "canceled"
    counts = done["counts"]
    assert counts["starting"] == 0 and counts["succeeded"] + counts["processing"] <= 2, counts
    assert client.get("/v1/queue").json()["queued"] == 0


def batch_sharing_an_image(client: httpx.Client, seed: int) -> tuple[dict, list[dict]]:
    """A completed batch of two identical items whose large image is stored once, for the batch."""
    line = item(seed=seed)
    line["input"]["input_image"] = data_uri(png_bytes(256, 256, seed=seed))
    created = client.post("/v1/batches", json={"predictions": [line, line]})
    assert created.status_code == 201, created.text
    batch = wait_for_batch(client, created.json()["id"], {"completed"})
    predictions = all_predictions(client, batch)
    assert f"/v1/batches/{batch['id']}/inputs/" in predictions[0]["input"]["input_image"]
    return batch, predictions


def test_shared_inputs_go_with_the_items_retention(stack, client):
    batch, predictions = batch_sharing_an_image(client, seed=21)
    unsigned = predictions[0]["input"]["input_image"].split("?")[0]
    assert client.get(unsigned).status_code == 200

    db = redis.Redis.from_url(stack.redis_url)
    items_due = max(db.zscore(keys.retention(), f"prediction:{p['id']}") or 0 for p in predictions)
    # The batch's stored inputs are due with its items' retention, not days later.
    wait_until(
        lambda: (db.zscore(keys.retention(), f"batch:{batch['id']}") or float("inf")) <= items_due + 5,
        60,
        what="the batch's inputs to be due with its items",
    )
    storage = Storage(stack.settings())
    janitor = Janitor(db, storage)
    db.zadd(keys.retention(), {f"batch:{batch['id']}": time.time() - 1})
    janitor.sweep()  # or the stack's own janitor first

    def stored() -> int:
        return storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=batch_prefix(batch["id"])).get("KeyCount")

    wait_until(lambda: stored() == 0, 60, what="the batch's stored inputs deleted")
    assert client.get(unsigned).status_code == 404


def test_shared_input_urls_are_signed_like_single_predictions(stack, client, other_client):
    _, (first, _) = batch_sharing_an_image(client, seed=22)
    reference = first["input"]["input_image"]
    assert "sig=" in reference and "expires=" in reference, reference
    unsigned = reference.split("?")[0]
    with httpx.Client() as anonymous:
        assert anonymous.get(reference).content == png_bytes(256, 256, seed=22), "the signed URL works alone"
        assert anonymous.get(unsigned).status_code in {401, 404}
        assert anonymous.get(unsigned + "?expires=9999999999&sig=forged").status_code in {401, 404}
    assert other_client.get(unsigned).status_code == 404
    assert client.get(unsigned).status_code == 200, "the owner's token needs no signature"
