"""``kiln/instantid-xl`` and reusable embeddings through the whole stack (tiny profile): served only with the
non-commercial setting, a photo without a face fails saying so, an uploaded face file succeeds and its returned
file gives the same image back, and files that do not fit are 422s naming the input."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tests.support import assert_problem, data_uri, png_bytes, wait_for_status
from tests.support.predictions import app_for, xl_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
MODEL = "kiln/instantid-xl"
TERMINAL = {"succeeded", "failed", "canceled"}


def upload(client, data: bytes, name: str = "face.safetensors") -> str:
    created = client.post("/v1/files", files={"content": (name, data, "application/octet-stream")})
    assert created.status_code == 201, created.text
    return created.json()["urls"]["get"]


def face_file(seed: int = 0, shape: tuple[int, ...] = (512,)) -> bytes:
    embedding = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return save_safetensors({"face_embedding": embedding / embedding.norm()})


def run(client, **fields) -> dict:
    body = {"input": {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 4} | fields}
    response = client.post(f"/v1/models/{MODEL}/predictions", json=body)
    assert response.status_code == 201, response.text
    return wait_for_status(client, response.json()["id"], TERMINAL, timeout=180)


def test_the_model_is_served_with_the_setting_and_states_its_licence(client) -> None:
    page = client.get(f"/v1/models/{MODEL}")
    assert page.status_code == 200
    assert "non-commercial" in page.json()["description"]
    assert MODEL in {f"{m['owner']}/{m['name']}" for m in client.get("/v1/models").json()["results"]}


def test_without_the_setting_it_is_absent_and_every_door_names_the_setting(stack) -> None:
    with app_for(stack, allow_noncommercial_models=False) as api:
        headers = {"Authorization": f"Bearer {TOKEN_A}"}
        listed = api.get("/v1/models", headers=headers).json()["results"]
        assert MODEL not in {f"{m['owner']}/{m['name']}" for m in listed}
        page = api.get(f"/v1/models/{MODEL}", headers=headers)
        assert page.status_code == 404 and "KILN_ALLOW_NONCOMMERCIAL_MODELS" in page.json()["detail"]
        body = {"input": {"face_image": data_uri(png_bytes(64, 64))}}
        created = api.post(f"/v1/models/{MODEL}/predictions", json=body, headers=headers)
        assert created.status_code == 404 and "KILN_ALLOW_NONCOMMERCIAL_MODELS" in created.json()["detail"]
        by_version = api.post("/v1/predictions", json={"version": MODEL} | body, headers=headers)
        assert by_version.status_code in (404, 422) and "KILN_ALLOW_NONCOMMERCIAL_MODELS" in by_version.text


def test_a_photo_without_a_face_fails_with_an_error_naming_the_input(client) -> None:
    done = run(client, face_image=data_uri(png_bytes(64, 64)))
    assert done["status"] == "failed"
    assert done["error"].startswith("no face found in face_image")


def test_an_uploaded_face_file_succeeds_and_its_returned_file_gives_the_same_image(client) -> None:
    first = run(client, face_embedding=upload(client, face_file()), return_embeddings=True)
    assert first["status"] == "succeeded", first["error"]
    image_url, file_url = first["output"]
    assert file_url.split("?")[0].endswith("/embeddings.safetensors")
    saved = client.get(file_url)
    assert saved.status_code == 200
    tensors = load_safetensors(saved.content)
    assert tensors["face_embedding"].shape == (512,) and tensors["face_kps"].shape == (5, 2)
    again = run(client, face_embedding=upload(client, saved.content))
    assert again["status"] == "succeeded", again["error"]
    a, b = (np.asarray(Image.open(io.BytesIO(client.get(url).content))) for url in (image_url, again["output"][0]))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (face_file(shape=(256,)), "input.face_embedding: tensor 'face_embedding' has shape [256], expected [512]"),
        (b"\x80\x04not a safetensors file", "input.face_embedding: not a safetensors file"),
    ],
)
def test_a_face_file_that_does_not_fit_is_a_422_naming_the_input(client, data: bytes, message: str) -> None:
    body = {"input": {"face_embedding": upload(client, data)}}
    response = client.post(f"/v1/models/{MODEL}/predictions", json=body)
    assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_ip_embeddings_of_the_wrong_variant_or_shape_are_a_422_naming_the_input(client) -> None:
    embeddings = save_safetensors({"ip_embeddings": torch.zeros(2, 1, 32)}, metadata={"ip_adapter_variant": "plus"})
    fields = xl_input() | {"ip_image": None, "ip_embeddings": upload(client, embeddings)}
    response = client.post("/v1/models/kiln/ip-adapter-depth-xl/predictions", json={"input": fields})
    assert (
        response.status_code == 422
        and "input.ip_embeddings: was made with ip_adapter_variant 'plus'" in (response.json()["detail"])
    )
    plus = client.post(
        "/v1/models/kiln/ip-adapter-depth-xl/predictions", json={"input": fields | {"ip_adapter_variant": "plus"}}
    )
    assert (
        plus.status_code == 422
        and "input.ip_embeddings: tensor 'ip_embeddings' has shape [2, 1, 32]" in (plus.json()["detail"])
    )


def test_ip_embeddings_round_trip_through_the_stack(client) -> None:
    body = {"input": xl_input(return_embeddings=True, seed=3)}
    created = client.post("/v1/models/kiln/ip-adapter-openpose-xl/predictions", json=body)
    first = wait_for_status(client, created.json()["id"], TERMINAL, timeout=180)
    assert first["status"] == "succeeded", first["error"]
    image_url, file_url = first["output"]
    saved = client.get(file_url).content
    fields = xl_input(seed=3) | {"ip_image": None, "ip_embeddings": upload(client, saved)}
    created = client.post("/v1/models/kiln/ip-adapter-openpose-xl/predictions", json={"input": fields})
    assert created.status_code == 201, created.text
    again = wait_for_status(client, created.json()["id"], TERMINAL, timeout=180)
    assert again["status"] == "succeeded", again["error"]
    a, b = (np.asarray(Image.open(io.BytesIO(client.get(url).content))) for url in (image_url, again["output"][0]))
    assert np.array_equal(a, b)


# --- The hostile tries (shared/HOSTILE.md) on the new file inputs and output ----------------------


def test_another_tenants_face_file_is_a_422_and_its_output_file_needs_the_signature(client, other_client) -> None:
    url = upload(client, face_file())
    body = {"input": {"face_embedding": url}}
    response = other_client.post(f"/v1/models/{MODEL}/predictions", json=body)
    assert_problem(response, 422, "input.face_embedding", "does not exist")
    done = run(client, face_embedding=url, return_embeddings=True)
    saved = done["output"][1]
    assert client.get(saved).status_code == 200
    assert other_client.get(saved.split("?")[0]).status_code in (403, 404)


def test_a_face_file_at_the_size_cap_passes_and_one_byte_over_is_a_422(stack) -> None:
    data = face_file()
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    for cap, status in ((len(data), 201), (len(data) - 1, 422)):
        with app_for(stack, embeddings_max_bytes=cap) as api:
            created = api.post("/v1/files", files={"content": ("f.safetensors", data)}, headers=headers)
            url = created.json()["urls"]["get"]
            response = api.post(
                f"/v1/models/{MODEL}/predictions", json={"input": {"face_embedding": url}}, headers=headers
            )
            assert response.status_code == status, response.text
            if status == 422:
                assert "KILN_EMBEDDINGS_MAX_BYTES" in response.json()["detail"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "shorter than a safetensors header"),
        (struct.pack("<Q", 100_000) + b"[" * 100_000, "nests deeper than 3 levels"),
        (struct.pack("<Q", 7) + b"\xff\xfe{}\x00\x00\x00", "not a safetensors file"),
    ],
    ids=["empty", "nested 100,000 deep", "invalid UTF-8"],
)
def test_files_parsers_choke_on_are_a_422_naming_the_input(client, data: bytes, fragment: str) -> None:
    for model, field in ((MODEL, "face_embedding"), ("kiln/ip-adapter-depth-xl", "ip_embeddings")):
        fields = ({} if model == MODEL else xl_input() | {"ip_image": None}) | {field: upload(client, data)}
        response = client.post(f"/v1/models/{model}/predictions", json={"input": fields})
        assert_problem(response, 422, f"input.{field}", fragment)


@pytest.mark.parametrize("url", ["https://100.100.100.200/f.safetensors", "https://[::ffff:a9fe:a9fe]/f.safetensors"])
def test_embedding_urls_to_non_global_addresses_are_refused(stack, url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    with app_for(stack, image_fetch_allow_private=False) as api:
        for model, fields in (
            (MODEL, {"face_embedding": url}),
            ("kiln/ip-adapter-depth-xl", xl_input() | {"ip_image": None, "ip_embeddings": url}),
        ):
            response = api.post(f"/v1/models/{model}/predictions", json={"input": fields}, headers=headers)
            field = "face_embedding" if model == MODEL else "ip_embeddings"
            assert_problem(response, 422, f"input.{field}", "not globally routable")
