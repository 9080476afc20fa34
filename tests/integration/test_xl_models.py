"""Both SDXL + IP-Adapter + ControlNet models end to end through the API, on the tiny profile."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.support.predictions import run_xl, xl_input

pytestmark = pytest.mark.integration
XL_MODELS = ["kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl"]


def images(client, done: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(client.get(url).content)) for url in done["output"]]


@pytest.mark.parametrize("model", XL_MODELS)
def test_xl_model_succeeds_with_the_control_map_as_an_extra_output(client, model):
    done = run_xl(client, model, return_control_map=True, num_outputs=2)
    assert done["status"] == "succeeded", done["error"]
    assert [url.split("?")[0].rsplit("/", 1)[1] for url in done["output"]] == [
        "out-0.png",
        "out-1.png",
        "control-map.png",
    ]
    assert [image.size for image in images(client, done)] == [(96, 64)] * 3


def test_same_seed_same_pixels_other_seed_other_pixels(client):
    first, second, other = (run_xl(client, XL_MODELS[0], seed=seed) for seed in (11, 11, 12))
    a, b, c = (np.asarray(images(client, done)[0]) for done in (first, second, other))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ip_image": None}, "an image prompt is required: ip_image, ip_images (a list) or ip_embeddings"),
        ({"ip_images": ["https://e.com/a.png"]}, "give one kind of image prompt, not both ip_image and ip_images"),
        ({"ip_adapter_mode": "layout"}, "input.ip_adapter_mode: Input should be 'full', 'style'"),
        ({"control_guidance_start": 0.9, "control_guidance_end": 0.1}, "control_guidance_start (0.9) must be less"),
        ({"lora_weights": "http://loras.example/a.safetensors"}, "input.lora_weights: must be an https URL"),
        ({"output_format": "gif"}, "input.output_format: Input should be 'png', 'jpg' or 'webp'"),
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
