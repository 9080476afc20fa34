"""The official ``replicate`` Python client (1.0.x) against Kiln, changing only the base URL."""

from __future__ import annotations

import base64
import io
import ssl
import threading

import httpx
import pytest
import replicate
from PIL import Image

from tests.support import png_bytes
from tests.support.stack import PAGE_SIZE, TOKEN_A
from tests.support.step_gates import WAITING, StepGate

pytestmark = pytest.mark.integration
FAST = {"prompt": "a kiln", "num_inference_steps": 4, "seed": 7}


def replicate_client(stack, transport_class: type[httpx.HTTPTransport] = httpx.HTTPTransport) -> replicate.Client:
    # The client builds its own transport, so the test CA goes there.
    transport = transport_class(verify=ssl.create_default_context(cafile=str(stack.tls_ca)))
    return replicate.Client(api_token=TOKEN_A, base_url=stack.tls_base_url, transport=transport)


@pytest.fixture
def rc(stack) -> replicate.Client:
    return replicate_client(stack)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(128, 128, seed=3))
    return path


def assert_png_outputs(outputs, count: int = 1, size=(128, 128)):
    assert len(outputs) == count
    for output in outputs:
        image = Image.open(io.BytesIO(output.read()))
        assert (image.format, image.size) == ("PNG", size)


def test_run_with_an_uploaded_file_returns_readable_file_outputs(rc, image_file):
    with image_file.open("rb") as f:
        outputs = rc.run("kiln/sd2-depth2img", input=FAST | {"input_image": f, "num_outputs": 2})
    assert_png_outputs(outputs, count=2)


def test_run_by_versioned_reference(rc, image_file):
    version = rc.models.get("kiln/sd2-depth2img").latest_version.id
    with image_file.open("rb") as f:
        outputs = rc.run(f"kiln/sd2-depth2img:{version}", input=FAST | {"input_image": f})
    assert_png_outputs(outputs)


def test_run_with_a_short_wait_falls_back_to_polling(stack, image_file):
    """``Prefer: wait=1`` on a prediction slower than a second: the client must poll to the end."""
    with StepGate(stack.redis_url) as gate:

        class OpenGateOnceCreated(httpx.HTTPTransport):
            """The prediction finishes only after the waited create has answered: the client must poll."""

            def handle_request(self, request: httpx.Request) -> httpx.Response:
                response = super().handle_request(request)
                if request.method == "POST" and request.url.path.endswith("/predictions"):
                    gate.open()
                return response

        rc = replicate_client(stack, OpenGateOnceCreated)
        with image_file.open("rb") as f:
            outputs = rc.run("kiln/sd2-depth2img", input=FAST | {"input_image": f, "prompt": gate.prompt}, wait=1)
    assert_png_outputs(outputs)


def test_create_wait_reload(rc, image_file):
    model = rc.models.get("kiln/sd2-depth2img")
    with image_file.open("rb") as f:
        prediction = rc.predictions.create(version=model.latest_version, input=FAST | {"input_image": f})
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded"
    prediction.reload()
    assert prediction.status == "succeeded" and len(prediction.output) == 1
    assert prediction.metrics["predict_time"] > 0


def test_cancel_a_running_prediction(stack, rc, image_file):
    with StepGate(stack.redis_url) as gate, image_file.open("rb") as f:  # running until it is canceled
        prediction = rc.models.predictions.create(
            model="kiln/sd2-depth2img",
            input=FAST | {"input_image": f, "prompt": gate.prompt, "num_inference_steps": 500, "prompt_strength": 1.0},
        )
        while WAITING not in (prediction.logs or ""):
            prediction.reload()
        prediction.cancel()
        prediction.wait()
    assert prediction.status == "canceled"


def test_kilns_queue_fields_and_priority_header_leave_the_client_working(stack, rc, image_file):
    """A queued prediction carries Kiln's ``queue_position`` and ``priority``, fields the client does not
    know: it creates, reloads and waits on it as on any other. ``Kiln-Priority``, the header for clients
    that cannot add body fields, goes on every request of a client built with it."""
    transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(stack.tls_ca)))
    low = replicate.Client(
        api_token=TOKEN_A, base_url=stack.tls_base_url, transport=transport, headers={"Kiln-Priority": "low"}
    )
    with StepGate(stack.redis_url) as gate, image_file.open("rb") as f:
        url = rc.files.create(f).urls["get"]
        blocker = rc.models.predictions.create(
            model="kiln/sd2-depth2img", input=FAST | {"input_image": url, "prompt": gate.prompt}
        )
        while WAITING not in (blocker.logs or ""):
            blocker.reload()
        queued = low.models.predictions.create(model="kiln/sd2-depth2img", input=FAST | {"input_image": url})
        queued.reload()
        assert queued.status == "starting"
        with stack.client(TOKEN_A) as plain:
            shown = plain.get(f"/v1/predictions/{queued.id}").json()
        assert shown["priority"] == "low" and isinstance(shown["queue_position"], int)
        gate.open()
        queued.wait()
    assert queued.status == "succeeded" and len(queued.output) == 1


def test_list_across_pages(rc, image_file):
    with image_file.open("rb") as f:
        url = rc.files.create(f).urls["get"]
    ids = {
        rc.predictions.create(model="kiln/sd2-depth2img", input=FAST | {"input_image": url}).id
        for _ in range(PAGE_SIZE + 1)
    }
    page = rc.predictions.list()
    seen, pages = set(), 0
    while True:
        pages += 1
        seen |= {p.id for p in page.results}
        if not page.next:
            break
        page = rc.predictions.list(page.next)
    assert ids <= seen and pages >= 2


def test_models_and_versions(rc):
    model = rc.models.get("kiln/sd2-depth2img")
    assert (model.owner, model.name, model.visibility) == ("kiln", "sd2-depth2img", "public")
    version = model.versions.get(model.latest_version.id)
    schemas = version.openapi_schema["components"]["schemas"]
    assert schemas["Input"]["properties"]["num_outputs"]["maximum"] == 8
    assert schemas["Output"]["type"] == "array"
    assert [v.id for v in model.versions.list()] == [version.id]


def test_invalid_input_raises_a_replicate_error_naming_the_field(rc):
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        rc.predictions.create(
            model="kiln/sd2-depth2img", input={"input_image": "https://x.test/a.png", "num_outputs": 99}
        )
    assert raised.value.status == 422 and "input.num_outputs" in raised.value.detail


def test_idempotency_key_under_concurrent_duplicates(stack, image_file):
    """20 identical requests at once with one Idempotency-Key: exactly one prediction exists."""
    body = {
        "version": "kiln/sd2-depth2img",
        "input": FAST | {"input_image": "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()},
    }
    headers = {"Authorization": f"Bearer {TOKEN_A}", "Idempotency-Key": "batch-42"}
    ids, barrier = [], threading.Barrier(20)

    def post():
        barrier.wait()
        response = httpx.post(f"{stack.base_url}/v1/predictions", json=body, headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 20 and len(set(ids)) == 1
    other = httpx.post(
        f"{stack.base_url}/v1/predictions",
        json=body | {"input": body["input"] | {"seed": 8}},
        headers=headers,
        timeout=30,
    )
    assert other.status_code == 409 and other.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("model", ["kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl"])
def test_run_each_xl_model(rc, image_file, model):
    with image_file.open("rb") as structure, image_file.open("rb") as image_prompt:
        outputs = rc.run(
            model,
            input={
                "input_image": structure,
                "ip_image": image_prompt,
                "width": 64,
                "height": 64,
                "num_inference_steps": 4,
                "return_control_map": True,
            },
        )
    assert_png_outputs(outputs, count=2, size=(64, 64))
