"""Every image input checked at submission whatever its source, and large ones kept in S3 with the
prediction (the real stack: API, worker, Redis, SeaweedFS)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import redis
from PIL import Image

from shared.db import keys
from tests.support import assert_problem, data_uri, png_bytes, png_claiming_size, wait_for_status
from tests.support.image_files import flat_png, rotated_jpeg
from tests.support.predictions import TERMINAL, depth2img_input
from tests.support.step_gates import StepGate, wait_until_waiting

pytestmark = pytest.mark.integration
VERSION = "kiln/sd2-depth2img"


def upload(client, data: bytes, name: str = "in.png", content_type: str = "image/png") -> str:
    response = client.post("/v1/files", files={"content": (name, data, content_type)})
    assert response.status_code == 201, response.text
    return response.json()["urls"]["get"]


def create(client, **inputs):
    return client.post("/v1/predictions", json={"version": VERSION, "input": depth2img_input(64, 64) | inputs})


def tenant_prediction_count(stack) -> int:
    db = redis.Redis.from_url(stack.redis_url)
    return sum(db.zcard(key) for key in db.scan_iter(match=keys.tenant_predictions("*")))


@pytest.mark.parametrize(
    ("field", "image", "fragment"),
    [
        ("input_image", lambda client: data_uri(png_bytes(64, 64)[:-300]), "truncated or corrupt"),
        ("input_image", lambda client: data_uri(png_claiming_size(6000, 6000)), "truncated or corrupt"),
        ("depth_image", lambda client: data_uri(flat_png()), "flat"),
        ("input_image", lambda client: upload(client, b"just some text\n", "a.txt", "text/plain"), "not a readable"),
        ("input_image", lambda client: upload(client, png_claiming_size(30000, 30000)), "pixels"),
    ],
    ids=["truncated-png", "header-only-6000x6000", "flat-depth", "file-text", "file-pixel-bomb"],
)
def test_each_bad_image_is_refused_at_submission_naming_its_field(stack, client, field, image, fragment):
    uri = image(client)
    before = tenant_prediction_count(stack)
    assert_problem(create(client, **{field: uri}), 422, f"input.{field}", fragment)
    assert tenant_prediction_count(stack) == before, "nothing stored"


def test_wrapped_unpadded_base64_is_accepted(client):
    encoded = base64.b64encode(png_bytes(64, 64, seed=5)).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    created = create(client, input_image=f"data:image/png;base64,{wrapped}\n")
    assert created.status_code == 201, created.text
    assert wait_for_status(client, created.json()["id"], TERMINAL)["status"] == "succeeded"


def test_a_rotated_jpeg_comes_out_upright(client):
    created = create(client, input_image=data_uri(rotated_jpeg(128, 64), "image/jpeg"))
    assert created.status_code == 201, created.text
    done = wait_for_status(client, created.json()["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    output = Image.open(io.BytesIO(client.get(done["output"][0]).content))
    assert output.size == (64, 128), "the output follows the upright input, portrait"


def test_a_large_input_lives_in_s3_and_clients_see_a_signed_url_to_it(stack, client):
    image = png_bytes(256, 256, seed=6)
    created = create(client, input_image=data_uri(image))
    assert created.status_code == 201, created.text
    body = created.json()
    shown = body["input"]["input_image"]
    assert shown.startswith(f"{stack.base_url}/v1/predictions/{body['id']}/inputs/input_image?expires=")
    anonymous = httpx.get(shown)  # no token: the signature is the capability
    assert anonymous.status_code == 200 and anonymous.content == image
    record_input = redis.Redis.from_url(stack.redis_url).hget(keys.prediction(body["id"]), "input")
    assert len(record_input) < 1024, "the record keeps a reference, not the image"
    done = wait_for_status(client, body["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    listed = {p["id"]: p for p in client.get("/v1/predictions").json()["results"]}
    assert listed[body["id"]]["input"]["input_image"].split("?")[0] == shown.split("?")[0]


def test_a_file_input_deleted_after_submission_still_succeeds(stack, client):
    file_url = upload(client, png_bytes(64, 64, seed=7))
    with StepGate(stack.redis_url) as gate:
        # The one GPU worker is held by this one, so the next waits queued while its file is deleted.
        holding = create(client, prompt=gate.prompt).json()
        wait_until_waiting(client, holding["id"])
        created = create(client, input_image=file_url)
        assert created.status_code == 201, created.text
        assert client.delete(file_url).status_code == 204
        assert client.get(file_url).status_code == 404
    done = wait_for_status(client, created.json()["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    assert done["input"]["input_image"] == file_url
    wait_for_status(client, holding["id"], TERMINAL)


@pytest.mark.parametrize("name", ["%00", "%2E%2E", "%2E", "a%00b"])
def test_a_stored_input_name_s3_refuses_is_a_404(client, name):
    """Such names reached S3, whose 400 (a bad key) was answered 503 "storage unavailable; retry"."""
    created = create(client)
    assert created.status_code == 201, created.text
    response = client.get(f"/v1/predictions/{created.json()['id']}/inputs/{name}")
    assert_problem(response, 404, "has no stored input")
    line = {"version": "kiln/sd2-depth2img", "input": depth2img_input()}
    batch = client.post("/v1/batches", json={"predictions": [line]})
    assert batch.status_code == 201, batch.text
    assert_problem(client.get(f"/v1/batches/{batch.json()['id']}/inputs/{name}"), 404, "has no stored input")
