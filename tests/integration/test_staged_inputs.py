"""A create's large data-URI image is stored in S3 (under ``predictions/<id>/inputs/``) while the create is
validated, before it is stored. A create that is then not stored (an Idempotency-Key replay, a 409 for
another body, a 429 over its token's queue cap) must delete it: nothing would ever schedule that prefix's
retention. Its record names the stored copy in its input, with no ``input_files`` entry."""

from __future__ import annotations

import pytest
import redis

from shared.db import keys
from shared.storage.s3 import Storage
from tests.support import data_uri, png_bytes, wait_for_status
from tests.support.predictions import TERMINAL, depth2img_input
from tests.support.step_gates import StepGate, wait_until_waiting
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration

# Over KILN_INLINE_INPUT_MAX_BYTES (16 KiB): stored in S3, not in the record.
LARGE_IMAGE = data_uri(png_bytes(128, 96, seed=11))


def prediction_prefixes(stack) -> set[str]:
    """Every prediction id with an object under ``predictions/`` in the bucket."""
    storage = Storage(stack.settings())
    pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix="predictions/")
    return {item["Key"].split("/")[1] for page in pages for item in page.get("Contents", [])}


def orphans(stack, before: set[str]) -> list[str]:
    """Prediction prefixes new since ``before`` with no record and no retention scheduled."""
    db = redis.Redis.from_url(stack.redis_url)
    return sorted(
        i
        for i in prediction_prefixes(stack) - before
        if not db.exists(keys.prediction(i)) and db.zscore(keys.retention(), f"prediction:{i}") is None
    )


def with_large_image(**input_overrides) -> dict:
    return {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=LARGE_IMAGE, **input_overrides)}


@pytest.mark.parametrize("same_body", [True, False], ids=["replay", "conflict"])
def test_a_create_its_idempotency_key_answers_leaves_nothing_staged(stack, client, same_body):
    key = {"Idempotency-Key": f"staged-inputs-{same_body}"}
    before = prediction_prefixes(stack)
    first = client.post("/v1/predictions", json=with_large_image(), headers=key)
    assert first.status_code == 201, first.text
    second = client.post("/v1/predictions", json=with_large_image(prompt=f"same body: {same_body}"), headers=key)
    if same_body:
        second = client.post("/v1/predictions", json=with_large_image(), headers=key)
        assert second.status_code == 201 and second.json()["id"] == first.json()["id"], second.text
    else:
        assert second.status_code == 409, second.text
    wait_for_status(client, first.json()["id"], TERMINAL)
    assert prediction_prefixes(stack) - before == {first.json()["id"]}
    assert orphans(stack, before) == []


def test_a_create_refused_over_its_queue_cap_leaves_nothing_staged(stack):
    _, token = new_token(stack.redis_url, prefix="staged", max_queued=1)
    with client_for(stack.base_url, token) as tenant, StepGate(stack.redis_url) as gate:
        running = tenant.post("/v1/predictions", json=with_large_image(prompt=gate.prompt))
        assert running.status_code == 201, running.text
        wait_until_waiting(tenant, running.json()["id"])
        queued = tenant.post("/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": depth2img_input()})
        assert queued.status_code == 201, queued.text
        before = prediction_prefixes(stack)
        assert tenant.post("/v1/predictions", json=with_large_image()).status_code == 429
        batch = tenant.post("/v1/predictions/batch", json={"predictions": [with_large_image()]})
        assert batch.status_code == 429, batch.text
        left = orphans(stack, before)
        for prediction in (queued, running):
            tenant.post(f"/v1/predictions/{prediction.json()['id']}/cancel")
        wait_for_status(tenant, running.json()["id"], TERMINAL)
    assert left == [], "a 429 left staged inputs in S3 with no record"
