"""What the integration tests send a running stack: model inputs, and predictions created with them."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from tests.support import data_uri, png_bytes, wait_for_status

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
# A tqdm progress line in a prediction's logs: "... | 3/4 [...".
STEP_LINE = re.compile(r"\| *(\d+)/(\d+) \[")


def depth2img_input(width=128, height=96, **overrides) -> dict:
    return {
        "prompt": "a kiln",
        "input_image": data_uri(png_bytes(width, height)),
        "num_inference_steps": 4,
        "seed": 42,
    } | overrides


def create(client: httpx.Client, **overrides) -> dict:
    """Create a kiln/sd2-depth2img prediction from ``depth2img_input(**overrides)``."""
    response = client.post(
        "/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": depth2img_input(**overrides)}
    )
    assert response.status_code == 201, response.text
    return response.json()


def create_with_webhook(client: httpx.Client, url: str, events: list[str] | None = None, **inputs) -> dict:
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(**inputs), "webhook": url}
    if events is not None:
        body["webhook_events_filter"] = events
    response = client.post("/v1/predictions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# Cancel-After values for a prediction that must start before its deadline and reach it while it
# runs: a few seconds on a quiet machine, each next one twice as long where a loaded one started it late.
RUNNING_DEADLINES_S = (3, 6, 12, 24)


def canceled_at_its_deadline(client: httpx.Client, create_with_deadline: Callable[[str], str]) -> dict:
    """Create gated predictions (``create_with_deadline(cancel_after)`` returns the id, its prompt a
    closed step gate's) until one reaches its deadline while it runs; return its record once it ended.
    One that reached its deadline still in the queue ends ``aborted``: the next gets longer."""
    for seconds in RUNNING_DEADLINES_S:
        prediction_id = create_with_deadline(f"{seconds}s")
        done = wait_for_status(client, prediction_id, TERMINAL)
        if done["status"] != "aborted":
            return done
    raise AssertionError(f"no prediction started within {RUNNING_DEADLINES_S[-1]} s of being created")


def step_lines(logs: str) -> list[tuple[int, int]]:
    """(step, of) for each progress line in ``logs``."""
    return [(int(a), int(b)) for a, b in STEP_LINE.findall(logs)]


def astronaut_uri(size: int = 128) -> str:
    """A real photo (scikit-image's astronaut) as the structure reference for depth and pose."""
    from skimage import data as skimage_data  # only the XL tests need it

    photo = Image.fromarray(skimage_data.astronaut()).resize((size, size))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def xl_input(**overrides) -> dict:
    return {
        "prompt": "an astronaut made of clay",
        "input_image": astronaut_uri(),
        "ip_image": data_uri(png_bytes(64, 64)),
        "width": 96,
        "height": 64,
        "num_inference_steps": 4,
        "seed": 5,
    } | overrides


def run_xl(client: httpx.Client, model: str, **overrides) -> dict:
    """Create an IP-Adapter XL prediction from ``xl_input(**overrides)`` and wait until it is terminal."""
    response = client.post(f"/v1/models/{model}/predictions", json={"input": xl_input(**overrides)})
    assert response.status_code == 201, response.text
    return wait_for_status(client, response.json()["id"], TERMINAL, timeout=180)


def app_for(stack, **overrides) -> TestClient:
    """An in-process API on the stack's Redis and S3, with settings overridden (no batch-intake
    process started ahead: most of these apps never create a batch)."""
    from api.app import create_app

    overrides.setdefault("batch_intake_warm", False)

    return TestClient(create_app(stack.settings(**overrides)))
