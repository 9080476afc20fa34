"""Both SDXL + IP-Adapter + ControlNet models end to end through the API, on the tiny profile."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from tests.support import data_uri, png_bytes, wait_for_status

pytestmark = pytest.mark.integration
TERMINAL = {"succeeded", "failed", "canceled"}
XL_MODELS = ["kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl"]


def astronaut_uri(size: int = 128) -> str:
    """A real photo (scikit-image's astronaut) as the structure reference for depth and pose."""
    photo = Image.fromarray(skimage_data.astronaut()).resize((size, size))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def xl_input(**overrides) -> dict:
    return {"prompt": "an astronaut made of clay", "input_image": astronaut_uri(), "ip_image": data_uri(png_bytes(64, 64)),
            "width": 96, "height": 64, "num_inference_steps": 4, "seed": 5} | overrides


def run(client, model: str, **overrides) -> dict:
    response = client.post(f"/v1/models/{model}/predictions", json={"input": xl_input(**overrides)})
    assert response.status_code == 201, response.text
    return wait_for_status(client, response.json()["id"], TERMINAL, timeout=180)


def images(client, done: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(client.get(url).content)) for url in done["output"]]


@pytest.mark.parametrize("model", XL_MODELS)
def test_xl_model_succeeds_with_the_control_map_as_an_extra_output(client, model):
    done = run(client, model, return_control_map=True, num_outputs=2)
    assert done["status"] == "succeeded", done["error"]
    assert [url.split("?")[0].rsplit("/", 1)[1] for url in done["output"]] == ["out-0.png", "out-1.png",
                                                                               "control-map.png"]
    assert [image.size for image in images(client, done)] == [(96, 64)] * 3


def test_same_seed_same_pixels_other_seed_other_pixels(client):
    first, second, other = (run(client, XL_MODELS[0], seed=seed) for seed in (11, 11, 12))
    a, b, c = (np.asarray(images(client, done)[0]) for done in (first, second, other))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ip_image": None}, "input.ip_image"),
        ({"width": 100}, "input.width: Value error, must be a multiple of 8, got 100"),
        ({"height": 4096}, "input.height: Value error, must be at most 1024"),
        ({"ip_adapter_scale": 1.5}, "input.ip_adapter_scale: Input should be less than or equal to 1"),
        ({"controlnet_scale": -0.1}, "input.controlnet_scale: Input should be greater than or equal to 0"),
        ({"num_outputs": 5}, "input.num_outputs: Input should be less than or equal to 4"),
        ({"input_image": None}, "input_image is required unless control_image is given"),
    ],
)
def test_invalid_xl_inputs_are_422s_naming_the_field(client, overrides, expected):
    body = {key: value for key, value in (xl_input() | overrides).items() if value is not None}
    response = client.post(f"/v1/models/{XL_MODELS[0]}/predictions", json={"input": body})
    assert response.status_code == 422
    assert expected in response.json()["detail"]
