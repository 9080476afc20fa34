"""One prediction's whole path with real processes: HTTP → Redis/Celery → tiny depth2img → S3 → HTTP."""

from __future__ import annotations

import io
import subprocess

import pytest
from PIL import Image

from tests.support import REPO_ROOT, python, wait_for_status
from tests.support.predictions import TERMINAL, create, depth2img_input, step_lines
from tests.support.stack import PAGE_SIZE, TOKEN_A, TOKEN_B
from tests.support.step_gates import StepGate, wait_until_waiting

pytestmark = pytest.mark.integration


def test_prediction_succeeds_and_its_output_png_downloads(client):
    created = create(client, num_outputs=2)
    assert created["status"] == "starting"
    assert created["urls"]["get"].endswith(f"/v1/predictions/{created['id']}")
    assert created["created_at"].endswith("Z")

    done = wait_for_status(client, created["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    assert len(done["output"]) == 2
    assert done["metrics"]["predict_time"] > 0
    assert done["metrics"]["total_time"] >= done["metrics"]["predict_time"]
    assert done["started_at"] and done["completed_at"]
    assert "Using seed: 42" in done["logs"]
    assert step_lines(done["logs"])[-1][0] == step_lines(done["logs"])[-1][1]

    response = client.get(done["output"][0])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    # 128x96 rounds down to multiples of 64.
    assert (image.format, image.size) == ("PNG", (128, 64))


def test_model_endpoint_and_token_scheme(stack):
    with stack.client(None) as anonymous:
        anonymous.headers["Authorization"] = f"Token {TOKEN_A}"
        response = anonymous.post("/v1/models/kiln/sd2-depth2img/predictions", json={"input": depth2img_input()})
    assert response.status_code == 201, response.text
    assert response.json()["model"] == "kiln/sd2-depth2img"


def test_version_id_and_versioned_ref_are_accepted(client):
    version = create(client)["version"]
    for ref in (version, f"kiln/sd2-depth2img:{version}"):
        response = client.post("/v1/predictions", json={"version": ref, "input": depth2img_input()})
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("payload", "field", "limit"),
    [
        ({"num_outputs": 9}, "input.num_outputs", "8"),
        ({"guidance_scale": 0.5}, "input.guidance_scale", "1"),
        ({"scheduler": "EULER"}, "input.scheduler", "DDIM"),
        ({"input_image": "file:///etc/passwd"}, "input.input_image", "http(s) URL or a data URI"),
        ({"input_image": "data:image/png;base64,bm90IGFuIGltYWdl"}, "input.input_image", "not a readable image"),
        ({"num_inference_step": 3}, "input.num_inference_step", "Extra inputs are not permitted"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_limit(client, payload, field, limit):
    response = client.post(
        "/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": depth2img_input() | payload}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and problem["title"]
    assert field in problem["detail"] and limit in problem["detail"]


def test_missing_input_image_and_unknown_version(client):
    response = client.post("/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": {"prompt": "x"}})
    assert response.status_code == 422 and "input.input_image" in response.json()["detail"]
    response = client.post("/v1/predictions", json={"version": "kiln/nope", "input": {}})
    assert response.status_code == 422 and "version" in response.json()["detail"]
    response = client.post("/v1/predictions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_requests_without_a_valid_token_are_401(stack):
    with stack.client(None) as anonymous:
        assert anonymous.get("/v1/predictions").status_code == 401
    with stack.client("wrong") as wrong:
        response = wrong.get("/v1/predictions")
    assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"


def test_another_tenant_sees_404(client, other_client):
    done = wait_for_status(client, create(client)["id"], TERMINAL)
    pid = done["id"]
    assert other_client.get(f"/v1/predictions/{pid}").status_code == 404
    assert other_client.post(f"/v1/predictions/{pid}/cancel").status_code == 404
    unsigned = done["output"][0].split("?")[0]
    assert other_client.get(unsigned).status_code == 404
    assert other_client.get(unsigned + "?sig=forged").status_code == 404
    assert pid not in {p["id"] for p in other_client.get("/v1/predictions").json()["results"]}
    assert client.get(unsigned).status_code == 200


def test_output_urls_are_signed_capabilities_that_need_no_header(stack, client):
    """What the JavaScript client does: download the output URL without any Authorization header."""
    done = wait_for_status(client, create(client)["id"], TERMINAL)
    with stack.client(None) as anonymous:
        response = anonymous.get(done["output"][0])
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        other_name = done["output"][0].replace("out-0.png", "out-1.png")
        assert anonymous.get(other_name).status_code == 404


def test_cancel_while_running_stops_within_a_step(stack, client):
    with StepGate(stack.redis_url) as gate:  # never opened: only the cancel ends it
        created = create(client, prompt=gate.prompt, width=64, height=64, num_inference_steps=500, prompt_strength=1.0)
        wait_until_waiting(client, created["id"])
        response = client.post(f"/v1/predictions/{created['id']}/cancel")
        assert response.status_code == 200
        done = wait_for_status(client, created["id"], TERMINAL, timeout=60)
    assert done["status"] == "canceled"
    assert done["output"] is None
    assert len(step_lines(done["logs"])) < 500


def test_cancel_while_queued_never_runs(stack, client):
    with StepGate(stack.redis_url) as gate:
        blocker = create(client, prompt=gate.prompt, width=64, height=64, num_inference_steps=500, prompt_strength=1.0)
        queued = create(client)
        canceled = client.post(f"/v1/predictions/{queued['id']}/cancel").json()
        assert canceled["status"] == "canceled" and canceled["completed_at"]
        client.post(f"/v1/predictions/{blocker['id']}/cancel")
    # A prediction queued after both runs only once the worker has seen the canceled one's message.
    after = wait_for_status(client, create(client)["id"], TERMINAL)
    assert after["status"] == "succeeded"
    final = client.get(f"/v1/predictions/{queued['id']}").json()
    assert (final["status"], final["started_at"], final["logs"]) == ("canceled", None, "")


def test_list_is_newest_first_with_absolute_cursor_urls(stack):
    with stack.client(TOKEN_B) as c:
        before = {p["id"] for p in _all_pages(c)}
        ids = [create(c)["id"] for _ in range(PAGE_SIZE + 1)]
        first = c.get("/v1/predictions").json()
        assert [p["id"] for p in first["results"]] == ids[::-1][:PAGE_SIZE]
        assert first["previous"] is None and first["next"].startswith(stack.base_url + "/v1/predictions?cursor=")
        second = c.get(first["next"]).json()
        assert second["results"][0]["id"] == ids[0]
        back = c.get(second["previous"]).json()
        assert [p["id"] for p in back["results"]] == [p["id"] for p in first["results"]]
        assert {p["id"] for p in _all_pages(c)} == before | set(ids)
        assert c.get("/v1/predictions?cursor=garbage").status_code == 400


def _all_pages(c) -> list[dict]:
    results, url = [], "/v1/predictions"
    while url:
        page = c.get(url).json()
        results += page["results"]
        url = page["next"]
    return results


def test_api_process_never_imports_torch(stack):
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from api.app import create_app\n"
        "with TestClient(create_app()) as c:\n"
        f"    r = c.post('/v1/predictions', headers={{'Authorization': 'Bearer {TOKEN_A}'}},\n"
        "               json={'version': 'kiln/sd2-depth2img', 'input': {'num_outputs': 99}})\n"
        "    assert r.status_code == 422, r.text\n"
        "    assert c.get('/health').status_code == 200\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'controlnet_aux') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [python(), "-c", script], env=stack.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
