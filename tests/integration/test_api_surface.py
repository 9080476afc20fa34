"""API surface details: rate limits, Prefer: wait answers, the files API, OpenAPI validity."""

from __future__ import annotations

import json
import time

import pytest
from openapi_spec_validator import validate

from api.routes.files import METADATA_MAX_BYTES
from shared.storage.objects import file_key
from shared.storage.s3 import Storage
from tests.support import assert_problem, png_bytes
from tests.support.predictions import app_for, depth2img_input
from tests.support.stack import TOKEN_A
from tests.support.step_gates import StepGate
from tests.support.xl_inputs import FACE, RAMP

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN_A}"}


def test_rate_limit_answers_429_with_retry_headers(stack):
    # A tenant of its own, so other tests' requests don't share the bucket.
    token = "rate-limited-token"
    with app_for(stack, api_token=token, rate_limit_per_s=1, rate_limit_burst=3) as c:
        answers = [c.get("/v1/predictions", headers={"Authorization": f"Bearer {token}"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
    limited = answers[3]
    assert limited.headers["content-type"] == "application/problem+json"
    assert int(limited.headers["retry-after"]) >= 1 and int(limited.headers["ratelimit-reset"]) >= 1
    assert "rate limit" in limited.json()["detail"]


def test_prefer_wait_that_times_out_answers_starting_with_location(stack, client):
    with StepGate(stack.redis_url) as gate:  # not finished within the wait, on any machine
        response = client.post(
            "/v1/predictions",
            headers={"Prefer": "wait=1"},
            json={
                "version": "kiln/sd2-depth2img",
                "input": depth2img_input(
                    prompt=gate.prompt, width=64, height=64, num_inference_steps=200, prompt_strength=1.0
                ),
            },
        )
        assert response.status_code == 201
        body = response.json()
        client.post(f"/v1/predictions/{body['id']}/cancel")
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["location"] == body["urls"]["get"]
    assert body["status"] == "starting" and body["output"] is None


def test_prefer_wait_that_finishes_answers_the_terminal_prediction(client):
    started = time.monotonic()
    response = client.post(
        "/v1/predictions",
        headers={"Prefer": "wait=30"},
        json={"version": "kiln/sd2-depth2img", "input": depth2img_input()},
    )
    assert response.status_code == 201
    assert response.json()["status"] == "succeeded" and response.json()["output"]
    assert "location" not in response.headers
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=-1", "wait=abc", "wait=1.5", "respond-async, wait=x"])
def test_prefer_wait_malformed_or_out_of_range_is_a_400(client, prefer):
    response = client.post(
        "/v1/predictions",
        headers={"Prefer": prefer},
        json={"version": "kiln/sd2-depth2img", "input": depth2img_input()},
    )
    assert response.status_code == 400 and "Prefer: wait" in response.json()["detail"]


def test_files_upload_get_download_delete_and_use_as_input(client, other_client):
    data = png_bytes(64, 64)
    created = client.post(
        "/v1/files", files={"content": ("in.png", data, "image/png")}, data={"metadata": '{"purpose": "test"}'}
    )
    assert created.status_code == 201, created.text
    record = created.json()
    assert (record["name"], record["size"], record["metadata"]) == ("in.png", len(data), {"purpose": "test"})
    assert client.get(record["urls"]["get"]).json()["id"] == record["id"]
    assert client.get(f"{record['urls']['get']}/download").content == data
    assert other_client.get(record["urls"]["get"]).status_code == 404
    # Another tenant cannot use it as an input either.
    as_input = {"version": "kiln/sd2-depth2img", "input": depth2img_input() | {"input_image": record["urls"]["get"]}}
    assert other_client.post("/v1/predictions", json=as_input).status_code == 422
    assert client.post("/v1/predictions", json=as_input).status_code == 201
    assert client.delete(record["urls"]["get"]).status_code == 204
    assert client.get(record["urls"]["get"]).status_code == 404
    assert client.post("/v1/predictions", json=as_input).status_code == 422


def test_a_file_whose_bytes_went_after_its_record_was_read_is_missing_not_a_500(stack, client):
    """A DELETE racing a reader: the reader found the record, then the bytes were gone (here: deleted from S3
    under a record that stays). Each reader answers as for a missing file: 404, or a 422 naming it."""
    record = client.post("/v1/files", files={"content": ("in.png", png_bytes(64, 64), "image/png")}).json()
    Storage(stack.settings()).delete(file_key(record["id"]))
    url = record["urls"]["get"]
    missing = f"file {record['id']} does not exist or has expired"

    assert client.get(f"{url}/download").status_code == 404
    batch = client.post("/v1/batches", json={"version": "kiln/sd2-depth2img", "input_file": url})
    assert batch.status_code == 422 and "input_file" in batch.json()["detail"], batch.text
    image = {"version": "kiln/sd2-depth2img", "input": depth2img_input() | {"input_image": url}}
    lora = {
        "version": "kiln/ip-adapter-depth-xl",
        "input": {"control_image": RAMP, "ip_image": FACE, "lora_weights": url},
    }
    for body, field in ((image, "input_image"), (lora, "lora_weights")):
        answer = client.post("/v1/predictions", json=body)
        assert answer.status_code == 422 and missing in answer.json()["detail"] and field in answer.json()["detail"]


@pytest.mark.parametrize("metadata", ["[1, 2]", '{"a": ' + "9" * 5000 + "}"], ids=["array", "5000-digit-integer"])
def test_files_reject_bad_metadata(client, metadata):
    response = client.post(
        "/v1/files", files={"content": ("a.bin", b"x", "application/octet-stream")}, data={"metadata": metadata}
    )
    assert_problem(response, 422, "metadata: must be a JSON object")


def test_a_file_name_past_the_part_header_cap_is_a_400_saying_so(client):
    """It was a 400 "Invalid multipart data." that named nothing."""
    before = client.get("/v1/files").json()["results"]
    response = client.post("/v1/files", files={"content": ("n" * 10_000 + ".bin", b"x", "application/octet-stream")})
    assert_problem(response, 400, "Maximum header size exceeded", "file name included, is at most 4224 bytes")
    assert client.get("/v1/files").json()["results"] == before


def test_problem_json_for_unknown_routes_and_models(client):
    for response in (
        client.get("/v1/nope"),
        client.get("/v1/models/kiln/nope"),
        client.get("/v1/predictions/doesnotexist"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert set(response.json()) >= {"title", "detail", "status"}


def test_the_api_openapi_document_is_valid(client):
    validate(client.get("/openapi.json").json())


def test_remote_image_urls_are_fetched_at_submission_and_kept(stack, tmp_path):
    """The URL is fetched once, by the API; the worker runs even after the image server is gone."""
    import http.server
    import threading

    body = png_bytes(128, 64)

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/photo.png"
    with app_for(stack, image_fetch_allow_private=True) as c:
        created = c.post(
            "/v1/predictions",
            headers=AUTH,
            json={"version": "kiln/sd2-depth2img", "input": depth2img_input() | {"input_image": url}},
        )
        server.shutdown()
        server.server_close()
        assert created.status_code == 201, created.text
        assert created.json()["input"]["input_image"] == url
        deadline = time.monotonic() + 60
        while (done := c.get(created.json()["urls"]["get"], headers=AUTH).json())["status"] not in {
            "succeeded",
            "failed",
            "canceled",
        } and time.monotonic() < deadline:
            time.sleep(0.2)
    assert done["status"] == "succeeded", done["error"]


def test_file_metadata_has_a_cap_of_its_own_and_a_file_at_its_cap_fits_beside_it(stack, client):
    """Metadata is kept with the file's record and shown by every read: at most ``METADATA_MAX_BYTES``, sent
    as a field (the Python client) or a file part (the JS client); past it, a 413 naming ``metadata``. A file
    at its own cap with metadata at its cap is within the upload's body cap."""

    def metadata_of(size: int) -> str:
        return json.dumps({"note": "x" * (size - len('{"note": ""}'))})

    def part(text: str) -> tuple[str, str, str]:
        return ("m.json", text, "application/json")

    at_cap, past = metadata_of(METADATA_MAX_BYTES), metadata_of(METADATA_MAX_BYTES + 1)
    content = {"content": ("a.bin", b"x" * 4096, "application/octet-stream")}
    with app_for(stack, file_max_bytes=4096) as app:
        as_field = app.post("/v1/files", files=content, data={"metadata": at_cap}, headers=AUTH)
        assert as_field.status_code == 201, as_field.text
        assert len(json.dumps(as_field.json()["metadata"])) == METADATA_MAX_BYTES
        as_part = app.post(
            "/v1/files", files=content | {"metadata": ("m.json", at_cap, "application/json")}, headers=AUTH
        )
        assert as_part.status_code == 201, as_part.text
        for sent in (
            {"data": {"metadata": past}},
            {"files": content | {"metadata": ("m.json", past, "application/json")}},
        ):
            refused = app.post("/v1/files", **({"files": content} | sent), headers=AUTH)
            assert_problem(refused, 413, f"metadata is larger than {METADATA_MAX_BYTES} bytes")
        # A urlencoded body has no file part, but its metadata past the cap is answered first, the same way.
        urlencoded = app.post("/v1/files", data={"metadata": past}, headers=AUTH)
        assert_problem(urlencoded, 413, f"metadata is larger than {METADATA_MAX_BYTES} bytes")
