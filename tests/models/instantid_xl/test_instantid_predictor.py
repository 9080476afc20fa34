"""``kiln/instantid-xl`` on the tiny profile: no face is a clear failure, a saved face gives an image and a
file that gives the same image back, photos are averaged, strengths and regions are wired, LoRAs don't leak."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.instantid_xl.embeddings import FACE_EMBEDDING, FACE_KPS
from models.instantid_xl.faces import FaceAnalyzer, NoFaceError, average_faces
from models.instantid_xl.keypoints import DEFAULT_FRONTAL_KPS
from models.instantid_xl.predictor import InstantIDXLPredictor
from models.instantid_xl.schema import InstantIDXLInput
from models.kit.contract import NamedFile
from models.registry import find_model
from models.sdxl_family.fake_weights.tiny_lora import tiny_lora_state_dict
from shared.scheduling import queues
from tests.support.fakes import FakeContext
from tests.support.xl_inputs import FACE, PRODUCT
from worker.predictor_pool import PredictorPool

SAVED = "https://files.example/face.safetensors"
OTHER = "https://files.example/other-face.safetensors"
LORA = "https://loras.example/tiny.safetensors"


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def face_file(embedding: np.ndarray, kps: np.ndarray | None = None) -> bytes:
    tensors = {FACE_EMBEDDING: torch.from_numpy(embedding)}
    if kps is not None:
        tensors[FACE_KPS] = torch.from_numpy(kps)
    return save_safetensors(tensors)


FILES = {
    SAVED: face_file(unit(1)),
    OTHER: face_file(unit(2)),
    LORA: save_safetensors(tiny_lora_state_dict(seed=0)),
}


@pytest.fixture(scope="module")
def instantid(make_settings) -> Iterator[InstantIDXLPredictor]:
    pool = PredictorPool(make_settings(allow_noncommercial_models=True))
    pool.load_for_queues([queues.SDXL])
    assert "kiln/instantid-xl" in pool.models
    predictor = pool.get(find_model("kiln/instantid-xl"))
    assert isinstance(predictor, InstantIDXLPredictor)
    yield predictor


def given(**fields: Any) -> InstantIDXLInput:
    values = {"prompt": "a portrait", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 5} | fields
    if not {"face_image", "face_images", "face_embedding"} & values.keys():
        values["face_embedding"] = SAVED
    return InstantIDXLInput(**values)


def outputs(predictor: InstantIDXLPredictor, files: dict[str, bytes] | None = None, **fields: Any) -> list[Any]:
    return predictor.predict(given(**fields), FakeContext(files=FILES | (files or {})))


def pixels(predictor: InstantIDXLPredictor, **fields: Any) -> np.ndarray:
    [image] = outputs(predictor, **fields)
    return np.asarray(image).astype(int)


def different(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).mean()) > 0.5


def test_without_the_setting_the_model_is_not_loaded(make_settings) -> None:
    pool = PredictorPool(make_settings())
    with pytest.raises(LookupError, match="KILN_ALLOW_NONCOMMERCIAL_MODELS"):
        pool.get(find_model("kiln/instantid-xl"))


def test_a_photo_without_a_face_fails_saying_so_and_naming_the_input(instantid) -> None:
    with pytest.raises(NoFaceError, match="no face found in face_image"):
        outputs(instantid, face_image=FACE)
    with pytest.raises(NoFaceError, match=r"no face found in face_images\[0\]"):
        outputs(instantid, face_images=[FACE, PRODUCT])
    with pytest.raises(NoFaceError, match="no face found in pose_image"):
        outputs(instantid, pose_image=PRODUCT)


def test_a_saved_face_gives_an_image_and_a_file_that_gives_the_same_image_back(instantid) -> None:
    image, saved = outputs(instantid, return_embeddings=True)
    assert isinstance(saved, NamedFile) and (saved.name, saved.extension) == ("embeddings", "safetensors")
    tensors = load_safetensors(saved.data)
    assert set(tensors) == {FACE_EMBEDDING, FACE_KPS}
    assert tensors[FACE_EMBEDDING].dtype == tensors[FACE_KPS].dtype == torch.float32
    assert tensors[FACE_EMBEDDING].shape == (512,) and tensors[FACE_KPS].shape == (5, 2)
    assert torch.linalg.norm(tensors[FACE_EMBEDDING]).item() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(tensors[FACE_EMBEDDING].numpy(), unit(1), atol=1e-6)
    # No keypoints in the file given and no pose_image: the frontal default, and it is what was saved.
    assert np.array_equal(tensors[FACE_KPS].numpy(), DEFAULT_FRONTAL_KPS)
    back = pixels(instantid, face_embedding="https://files.example/back.safetensors", files={
        "https://files.example/back.safetensors": saved.data
    })  # fmt: skip
    assert np.array_equal(np.asarray(image).astype(int), back)


def test_the_face_the_strengths_and_the_region_each_change_the_image(instantid) -> None:
    base = pixels(instantid)
    assert different(pixels(instantid, face_embedding=OTHER), base)
    assert different(pixels(instantid, ip_adapter_scale=0.0), base)
    assert different(pixels(instantid, identitynet_strength=0.0), base)
    assert different(pixels(instantid, enhance_face_region=False), base)
    moved = DEFAULT_FRONTAL_KPS + np.array([0.2, 0.1], dtype=np.float32)
    assert different(pixels(instantid, files={SAVED: face_file(unit(1), moved.astype(np.float32))}), base)


def test_predictions_that_differ_in_face_and_strengths_share_a_call_and_keep_their_pixels(instantid) -> None:
    ctx = FakeContext(files=FILES)
    first = instantid.prepare(given(ip_adapter_scale=0.4), ctx)
    second = instantid.prepare(given(face_embedding=OTHER, identitynet_strength=1.2, seed=8), ctx)
    assert first.group_key == second.group_key
    together = instantid.generate([first, second], ctx.step_callback())
    for job, job_outputs in zip((first, second), together, strict=True):
        [alone] = instantid.generate([job], ctx.step_callback())
        assert int(np.abs(np.asarray(alone[0]).astype(int) - np.asarray(job_outputs[0])).max()) <= 1


def test_from_an_embedding_no_face_model_runs(instantid, monkeypatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a face model ran")

    monkeypatch.setattr(instantid.faces, "face", refuse)
    monkeypatch.setattr(instantid.faces, "average", refuse)
    assert pixels(instantid).size


def test_several_photos_are_averaged(instantid, analyzer: FaceAnalyzer, monkeypatch) -> None:
    """With face models that find a face, ``face_images`` gives the averaged, normalised embedding, and the
    keypoints of the first photo."""
    monkeypatch.setattr(instantid, "faces", analyzer)
    ctx = FakeContext()
    job = instantid.prepare(given(face_images=[FACE, PRODUCT]), ctx)
    one, two = (analyzer.face(ctx.load_image(uri), "face_image") for uri in (FACE, PRODUCT))
    assert np.allclose(job.embedding, average_faces([one, two]).embedding, atol=1e-6)
    assert not np.allclose(job.embedding, one.embedding, atol=1e-3)
    assert np.linalg.norm(job.embedding) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(job.kps, one.kps)
    single = instantid.prepare(given(face_image=FACE), ctx)
    assert np.allclose(single.embedding, one.embedding, atol=1e-6)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({FACE_EMBEDDING: torch.zeros(256)}, r"tensor 'face_embedding' has shape \[256\], expected \[512\]"),
        ({"embedding": torch.zeros(512)}, "the file has no tensor 'face_embedding'"),
        ({FACE_EMBEDDING: torch.zeros(512), FACE_KPS: torch.zeros(4, 2)}, r"'face_kps' has shape \[4, 2\]"),
        ({FACE_EMBEDDING: torch.zeros(512)}, "the embedding is zero"),
    ],
)
def test_a_face_file_that_does_not_fit_fails_naming_the_input(instantid, tensors, message: str) -> None:
    with pytest.raises(ValueError, match=f"face_embedding: .*{message}"):
        outputs(instantid, files={SAVED: save_safetensors(tensors)})


def test_a_lora_then_none_gives_the_second_alone(instantid) -> None:
    alone = pixels(instantid, seed=21)
    with_lora = pixels(instantid, lora_weights=LORA)
    assert different(with_lora, pixels(instantid))
    assert np.array_equal(pixels(instantid, seed=21), alone)
    # InstantID's adapter is still what the UNet attends to: the face still matters after the LoRA left.
    assert different(pixels(instantid, seed=21, face_embedding=OTHER), alone)


def test_the_keypoint_controlnet_reads_the_face_not_the_prompt(instantid) -> None:
    """With the UNet's face adapter off, the face still changes the image: through the ControlNet's tokens."""
    assert different(
        pixels(instantid, ip_adapter_scale=0.0, face_embedding=OTHER), pixels(instantid, ip_adapter_scale=0.0)
    )


def test_the_compile_warm_up_makes_its_own_job(instantid) -> None:
    job = instantid.warmup_job((64, 64), 2, FakeContext())
    [[image]] = instantid.generate([job], FakeContext().step_callback())
    assert image.size == (64, 64)
