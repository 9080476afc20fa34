"""Batch creates in-process against a real redis-server: the order a worker would dequeue in
(another tenant's batch overtakes a large backlog), repeated images checked once, and a new id
found already stored (never written over: a batch chunk draws fresh ids, a single create is a 503)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.errors import install_error_handlers
from api.intake import batch_file as batch_intake
from api.intake import submission
from api.intake.inline_batch import submit_batch
from api.intake.submission import submit
from api.schemas import CreatePrediction
from api.services import Services
from deploy.devstack.servers import RedisServer
from models.registry import find_model
from shared.db.client import AlreadyStored
from shared.inputs import images
from shared.predictions.record import new_ids
from shared.scheduling import queues
from shared.settings import Settings
from tests.support import data_uri
from tests.support.predictions import depth2img_input

# A real redis-server on a free port (the batch scripts, kombu's priority lists).
pytestmark = pytest.mark.integration
HEAVY_AFTER = 3
SD2_INPUT = depth2img_input(width=64, height=64, num_inference_steps=1, prompt_strength=1.0, seed=1)


@pytest.fixture
def services(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        # No S3 here: the images stay inline (the bound is over their size).
        settings = Settings(
            _env_file=None,
            redis_url=server.url,
            api_token="a,b",
            batch_heavy_after=HEAVY_AFTER,
            inline_input_max_bytes=1024 * 1024,
        )
        services = Services.connect(settings)
        yield services
        services.redis.close()


def dequeue_order(services: Services, queue: str) -> list[str]:
    """Prediction ids in the order kombu's Redis transport hands them to a worker: priority steps
    in order, each list oldest first (LPUSH in, BRPOP out)."""
    order = []
    for step in queues.PRIORITY_STEPS:
        for raw in reversed(services.redis.lrange(queues.priority_lists(queue)[step], 0, -1)):
            message = json.loads(raw)
            order.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return order


def batch(services: Services, tenant: str, count: int) -> list[str]:
    items = [{"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"seed": i}} for i in range(count)]
    results, _ = submit_batch(services, tenant, items, "http://kiln.test", None)
    return [r["id"] for r in results]


def test_a_second_tenants_batch_waits_for_at_most_heavy_after_items_of_a_backlog(services):
    backlog = batch(services, "tenant-a", 5)
    later = batch(services, "tenant-b", 2)
    more_backlog = batch(services, "tenant-a", 2)

    assert (
        dequeue_order(services, queues.SD2_DEPTH)
        == backlog[:HEAVY_AFTER] + later + backlog[HEAVY_AFTER:] + more_backlog
    )


def test_single_creates_overtake_every_batch(services):
    backlog = batch(services, "tenant-a", 4)
    spec = find_model("kiln/sd2-depth2img")
    single, _ = submit(
        services, "tenant-b", spec, CreatePrediction(version=spec.ref, input=SD2_INPUT), "http://kiln.test"
    )

    assert dequeue_order(services, queues.SD2_DEPTH) == [single.id, *backlog]


def test_an_image_repeated_across_a_batch_is_checked_once_and_a_bad_one_fails_every_item(services, monkeypatch):
    inspected: list[int] = []
    real_inspect = images.inspect_image

    def counting(data: bytes, max_pixels: int):
        inspected.append(len(data))
        return real_inspect(data, max_pixels)

    monkeypatch.setattr("shared.inputs.schema.inspect_image", counting)
    good = batch(services, "tenant-a", 5)
    assert len(good) == 5 and len(inspected) == 1

    bad = {"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"input_image": data_uri(b"not an image")}}
    results, _ = submit_batch(services, "tenant-a", [bad, bad], "http://kiln.test", None)
    assert [r["status"] for r in results] == [422, 422]
    assert all("input.input_image" in r["detail"] for r in results)


def test_a_batch_chunk_whose_new_id_is_stored_is_stored_again_with_fresh_ids(services, monkeypatch):
    spec = find_model("kiln/sd2-depth2img")
    other, _ = submit(
        services, "tenant-b", spec, CreatePrediction(version=spec.ref, input=SD2_INPUT), "http://kiln.test"
    )
    draws = iter([lambda count: [other.id, *new_ids(count - 1)]])
    monkeypatch.setattr(batch_intake, "new_ids", lambda count: next(draws, new_ids)(count))
    items = [{"version": spec.ref, "input": SD2_INPUT | {"seed": seed}} for seed in range(3)]

    batch = batch_intake.create_batch(
        services, "tenant-a", batch_intake.inline_items(items), 3, "http://kiln.test", None, "inline", 100
    )

    ids = [entry for entry in services.batches.items(batch.id, 0, 10)]
    assert len(ids) == 3 and other.id not in ids
    assert [p.input["seed"] for p in services.store.get_many(ids)] == [0, 1, 2]
    assert services.store.get(other.id) == other
    assert batch.counts == {"starting": 3}


def test_a_single_create_whose_new_id_is_stored_is_refused_and_stores_nothing(services, monkeypatch):
    spec = find_model("kiln/sd2-depth2img")
    other, _ = submit(
        services, "tenant-b", spec, CreatePrediction(version=spec.ref, input=SD2_INPUT), "http://kiln.test"
    )
    monkeypatch.setattr(submission, "new_id", lambda: other.id)

    with pytest.raises(AlreadyStored):
        submit(services, "tenant-a", spec, CreatePrediction(version=spec.ref, input=SD2_INPUT), "http://kiln.test")

    assert services.store.get(other.id) == other
    assert services.store.list_for_tenant("tenant-a") == ([], False)
    assert services.store.queued.depth("tenant-a").tenant == 0
    assert dequeue_order(services, queues.SD2_DEPTH) == [other.id]


def test_the_api_answers_a_taken_id_with_a_503_problem():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/create")
    def create() -> None:
        raise AlreadyStored(["kiln:prediction:x"])

    response = TestClient(app).post("/create")

    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
    assert "nothing was stored; retry" in response.json()["detail"]
