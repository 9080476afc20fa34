"""Tenant isolation: every endpoint that takes an id answers another token exactly as it answers a
missing id (404), leaves the owner's resource untouched, and no list shows another tenant's items."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from redis import Redis

from shared.predictions.record import new_id
from shared.predictions.store import PredictionStore
from tests.support import assert_problem, png_bytes, wait_for_status, wait_until
from tests.support.batches import all_prediction_ids
from tests.support.predictions import create, depth2img_input
from tests.support.stack import TOKEN_A, TOKEN_B
from tests.support.step_gates import StepGate

pytestmark = pytest.mark.integration
TERMINAL = {"succeeded", "failed", "canceled"}

# Every route that takes a prediction or file id, with placeholders for the owner's ids.
ID_ENDPOINTS = [
    ("GET", "/v1/predictions/{prediction}"),
    ("POST", "/v1/predictions/{prediction}/cancel"),
    ("GET", "/v1/predictions/{prediction}/stream"),
    ("GET", "/v1/predictions/{prediction}/output/{output}"),
    ("GET", "/v1/predictions/{prediction}/output/{output}?sig=forged"),
    ("GET", "/v1/files/{file}"),
    ("GET", "/v1/files/{file}/download"),
    ("DELETE", "/v1/files/{file}"),
]


@dataclass
class Owned:
    """Tenant A's finished prediction and uploaded file."""

    prediction: dict
    output_name: str
    file: dict
    file_bytes: bytes

    def ids(self) -> dict[str, str]:
        return {"prediction": self.prediction["id"], "output": self.output_name, "file": self.file["id"]}


@pytest.fixture(scope="module")
def owned(stack) -> Owned:
    with stack.client(TOKEN_A) as owner:
        done = wait_for_status(owner, create(owner, width=64, height=64)["id"], TERMINAL)
        assert done["status"] == "succeeded", done["error"]
        data = png_bytes(64, 64, seed=7)
        uploaded = owner.post("/v1/files", files={"content": ("mine.png", data, "image/png")})
        assert uploaded.status_code == 201, uploaded.text
    output_name = done["output"][0].split("?")[0].rsplit("/", 1)[1]
    return Owned(done, output_name, uploaded.json(), data)


@pytest.fixture
def stream_client(stack) -> Iterator[httpx.Client]:
    """Tenant B with a short read timeout: a stream wrongly opened for B must not hang the test."""
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {TOKEN_B}"}, timeout=10) as c:
        yield c


def assert_owner_untouched(client: httpx.Client, owned: Owned) -> None:
    """The owner still sees the same finished prediction, its output and the file's bytes."""
    prediction = client.get(f"/v1/predictions/{owned.prediction['id']}").json()
    # The same outputs (their URLs are signed afresh on every read, so compare them unsigned).
    assert prediction["status"] == "succeeded"
    assert [u.split("?")[0] for u in prediction["output"]] == [u.split("?")[0] for u in owned.prediction["output"]]
    unsigned = f"/v1/predictions/{owned.prediction['id']}/output/{owned.output_name}"
    assert client.get(unsigned).content.startswith(b"\x89PNG")
    assert client.get(f"/v1/files/{owned.file['id']}").json()["id"] == owned.file["id"]
    assert client.get(f"/v1/files/{owned.file['id']}/download").content == owned.file_bytes


def answer(client: httpx.Client, method: str, path: str) -> httpx.Response:
    """The response, read whole; a body that breaks off (a stream that fails after its headers)
    is reported in the body, so that the status assertion explains the failure."""
    with client.stream(method, path) as response:
        try:
            body = response.read()
        except httpx.TransportError as exc:
            body = f"(the body broke off: {exc!r})".encode()
    return httpx.Response(response.status_code, headers=response.headers, content=body)


@pytest.mark.parametrize(("method", "template"), ID_ENDPOINTS)
def test_another_tenant_gets_the_404_of_a_missing_id(client, stream_client, owned, method, template):
    real = owned.ids()
    made_up = {"prediction": new_id(), "output": real["output"], "file": new_id()}
    response = answer(stream_client, method, template.format(**real))
    missing = answer(stream_client, method, template.format(**made_up))
    problem = assert_problem(response, 404)
    expected = assert_problem(missing, 404)["detail"]
    for key in ("prediction", "file"):
        expected = expected.replace(made_up[key], real[key])
    assert problem["detail"] == expected
    assert_owner_untouched(client, owned)


def test_another_tenant_cannot_cancel_a_running_or_queued_prediction(stack, client, other_client):
    """A queued prediction cancels at once and a running one is flagged: neither may happen for B."""
    with StepGate(stack.redis_url) as gate, Redis.from_url(stack.redis_url) as redis_client:
        # Running until it is canceled, on any machine.
        running = create(client, prompt=gate.prompt, width=64, height=64, num_inference_steps=500, prompt_strength=1.0)
        wait_for_status(client, running["id"], {"processing"})
        queued = create(client, width=64, height=64)
        store = PredictionStore(redis_client)
        try:
            for prediction in (running, queued):
                assert_problem(other_client.post(f"/v1/predictions/{prediction['id']}/cancel"), 404)
            assert not store.cancel_requested(running["id"])
            assert client.get(f"/v1/predictions/{queued['id']}").json()["status"] == "starting"
            assert client.get(f"/v1/predictions/{running['id']}").json()["status"] == "processing"
        finally:
            for prediction in (running, queued):
                client.post(f"/v1/predictions/{prediction['id']}/cancel")
    assert wait_for_status(client, running["id"], TERMINAL)["status"] == "canceled"


def cursor(direction: str, prediction_id: str) -> str:
    return base64.urlsafe_b64encode(f"{direction}:{prediction_id}".encode()).decode().rstrip("=")


def test_lists_show_only_the_tenants_own_items(client, other_client, owned):
    theirs = create(other_client, width=64, height=64)
    their_file = other_client.post(
        "/v1/files", files={"content": ("theirs.png", png_bytes(64, 64), "image/png")}
    ).json()
    mine, visible_to_them = all_prediction_ids(client), all_prediction_ids(other_client)
    assert owned.prediction["id"] in mine and theirs["id"] in visible_to_them
    assert not mine & visible_to_them
    # A cursor built from another tenant's id pages through the caller's own items only.
    for direction in ("before", "after"):
        crafted = f"/v1/predictions?cursor={cursor(direction, owned.prediction['id'])}"
        assert all_prediction_ids(other_client, crafted) <= visible_to_them
    my_files = {f["id"] for f in client.get("/v1/files").json()["results"]}
    their_files = {f["id"] for f in other_client.get("/v1/files").json()["results"]}
    assert owned.file["id"] in my_files and their_file["id"] in their_files
    assert not my_files & their_files
    wait_for_status(other_client, theirs["id"], TERMINAL)


@pytest.mark.parametrize("field", ["input_image", "depth_image"])
def test_another_tenants_file_url_is_not_an_input(client, other_client, owned, field):
    made_up = owned.file["urls"]["get"].replace(owned.file["id"], new_id())
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(width=64, height=64)}

    def create_with(url: str):
        return other_client.post("/v1/predictions", json=body | {"input": body["input"] | {field: url}})

    problem = assert_problem(create_with(owned.file["urls"]["get"]), 422, f"input.{field}")
    missing = assert_problem(create_with(made_up), 422)
    assert problem["detail"] == missing["detail"].replace(made_up.rsplit("/", 1)[1], owned.file["id"])
    assert owned.prediction["id"] not in all_prediction_ids(other_client)
    assert_owner_untouched(client, owned)


def test_the_same_idempotency_key_from_another_tenant_is_another_prediction(client, other_client):
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(width=64, height=64)}
    key = {"Idempotency-Key": f"shared-{new_id()}"}
    first = client.post("/v1/predictions", json=body, headers=key)
    other = other_client.post("/v1/predictions", json=body, headers=key)
    replay = client.post("/v1/predictions", json=body, headers=key)
    assert (first.status_code, other.status_code, replay.status_code) == (201, 201, 201)
    assert other.json()["id"] != first.json()["id"] and "idempotent-replayed" not in other.headers
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    assert_problem(other_client.get(f"/v1/predictions/{first.json()['id']}"), 404)
    for c, created in ((client, first), (other_client, other)):
        wait_until(
            lambda c=c, created=created: c.get(f"/v1/predictions/{created.json()['id']}").json()["status"] in TERMINAL,
            120,
            what="the idempotent predictions to finish",
        )
