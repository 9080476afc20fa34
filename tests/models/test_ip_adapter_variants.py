"""ip_adapter_variant (standard, plus, plus-face) and image-prompt embeddings kept and reused (ip_embeddings,
return_embeddings), on the tiny XL models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.kit.contract import NamedFile
from models.kit.rows import rows
from models.sdxl_family.embeddings import IP_EMBEDDINGS, VARIANT_KEY, ip_embedding_dims
from models.sdxl_family.ip_adapter_scales import ip_adapter_block_scales
from models.sdxl_family.predictor import IPAdapterXLPredictor
from models.sdxl_family.row_scales import adapter_selected
from models.sdxl_family.schema import IPAdapterVariant
from shared.inputs.safetensors_files import METADATA_KEY, read_safetensors_header
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tests.support.xl_inputs import FACE, PRODUCT, SETTING, inputs
from tests.support.xl_runs import kiln_pixels

SAVED = "https://files.example/embeddings.safetensors"
VARIANTS = [variant.value for variant in IPAdapterVariant]


def images_and_file(predictor: IPAdapterXLPredictor, **fields: Any) -> tuple[list[np.ndarray], NamedFile]:
    *images, saved = predictor.predict(inputs(return_embeddings=True, **fields), FakeContext())
    assert isinstance(saved, NamedFile)
    return [np.asarray(image) for image in images], saved


def pixels_from(predictor: IPAdapterXLPredictor, data: bytes, **fields: Any) -> list[np.ndarray]:
    ctx = FakeContext(files={SAVED: data})
    return [np.asarray(image) for image in predictor.predict(inputs(ip_embeddings=SAVED, **fields), ctx)]


def different(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return float(np.abs(np.concatenate(a).astype(float) - np.concatenate(b)).mean()) > 0.5


@pytest.mark.parametrize("variant", ["plus", "plus-face"])
def test_each_plus_variant_runs_and_reads_the_image_prompt_its_own_way(depth, variant: str) -> None:
    standard = kiln_pixels(depth, ip_image=FACE)
    plus = kiln_pixels(depth, ip_image=FACE, ip_adapter_variant=variant)
    assert different(plus, standard)
    # Its image prompt matters: another image gives another output.
    assert different(kiln_pixels(depth, ip_image=PRODUCT, ip_adapter_variant=variant), plus)


def test_plus_and_plus_face_are_different_adapters(depth) -> None:
    assert different(
        kiln_pixels(depth, ip_image=FACE, ip_adapter_variant="plus"),
        kiln_pixels(depth, ip_image=FACE, ip_adapter_variant="plus-face"),
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_gives_the_pixels_of_diffusers_with_only_that_adapter_at_that_scale(depth, variant: str) -> None:
    """Kiln's row-scaled call with the variant's adapter selected is diffusers' float-scale call on that adapter."""
    fields = {"ip_image": FACE, "ip_adapter_variant": variant, "ip_adapter_scale": 0.7}
    kiln = kiln_pixels(depth, **fields)
    job = depth.prepare(inputs(**fields), FakeContext())
    with adapter_selected(depth.pipe.unet, depth.adapter_index(job)):
        depth.pipe.set_ip_adapter_scale(
            ip_adapter_block_scales(depth.pipe.unet.config, job.inputs.ip_adapter_mode, 0.7)
        )
        layout = rows([job], lambda job: job.inputs.num_outputs)
        images = depth.run_pipeline([job], layout, FakeContext().step_callback(), controlnet_conditioning_scale=0.8)
    reference = [np.asarray(image) for image in images]
    assert all(int(np.abs(a.astype(int) - b).max()) <= 1 for a, b in zip(kiln, reference, strict=True))


def test_predictions_of_one_plus_variant_share_a_call_and_keep_their_pixels(depth) -> None:
    first = depth.prepare(inputs(ip_image=FACE, ip_adapter_variant="plus", ip_adapter_scale=0.3), FakeContext())
    second = depth.prepare(inputs(ip_image=SETTING, ip_adapter_variant="plus", seed=9), FakeContext())
    other = depth.prepare(inputs(ip_image=SETTING, ip_adapter_variant="plus-face"), FakeContext())
    assert first.group_key == second.group_key != other.group_key
    together = depth.generate([first, second], FakeContext().step_callback())
    for job, outputs in zip((first, second), together, strict=True):
        [alone] = depth.generate([job], FakeContext().step_callback())
        assert int(np.abs(np.asarray(alone[0]).astype(int) - np.asarray(outputs[0])).max()) <= 1


@pytest.mark.parametrize("model", ["depth", "openpose"])
@pytest.mark.parametrize("variant", ["standard", "plus"])
def test_returned_embeddings_fed_back_give_the_same_pixels(request, model: str, variant: str) -> None:
    predictor = request.getfixturevalue(model)
    fields = {"ip_adapter_variant": variant, "seed": 11}
    images, saved = images_and_file(predictor, ip_image=FACE, **fields)
    assert (saved.name, saved.extension) == ("embeddings", "safetensors")
    tensors = load_safetensors(saved.data)
    embeddings = tensors[IP_EMBEDDINGS]
    assert embeddings.shape == (2, 1, *ip_embedding_dims(predictor.settings, IPAdapterVariant(variant)))
    assert embeddings.dtype.is_floating_point
    assert all(np.array_equal(a, b) for a, b in zip(images, pixels_from(predictor, saved.data, **fields), strict=True))


def test_several_image_prompts_round_trip_with_their_weights(depth) -> None:
    fields = {"ip_adapter_scales": [0.9, 0.2]}
    images, saved = images_and_file(depth, ip_images=[FACE, PRODUCT], **fields)
    assert load_safetensors(saved.data)[IP_EMBEDDINGS].shape[1] == 2
    assert all(np.array_equal(a, b) for a, b in zip(images, pixels_from(depth, saved.data, **fields), strict=True))


def test_the_file_records_its_variant_and_another_variant_refuses_it(depth) -> None:
    _, saved = images_and_file(depth, ip_image=FACE, ip_adapter_variant="plus")
    assert read_safetensors_header([saved.data])[METADATA_KEY][VARIANT_KEY] == "plus"
    with pytest.raises(ValueError, match=r"ip_embeddings: was made with ip_adapter_variant 'plus'"):
        pixels_from(depth, saved.data, ip_adapter_variant="plus-face")


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"other": np.zeros((2, 1, 32), np.float32)}, "must hold one tensor named 'ip_embeddings'"),
        ({IP_EMBEDDINGS: np.zeros((2, 1, 33), np.float32)}, r"has shape \[2, 1, 33\], expected \[2, n, 32\]"),
        ({IP_EMBEDDINGS: np.zeros((2, 5, 32), np.float32)}, "holds 5 image prompts, expected 1 to 4"),
        ({IP_EMBEDDINGS: np.zeros((2, 1, 32), np.int32)}, "expected floats"),
    ],
)
def test_an_embeddings_file_that_does_not_fit_is_refused_naming_the_input(depth, tensors, message: str) -> None:
    data = save_safetensors({name: torch.from_numpy(array) for name, array in tensors.items()})
    with pytest.raises(ValueError, match=f"ip_embeddings: .*{message}"):
        pixels_from(depth, data)


def test_a_pickle_is_never_loaded_as_embeddings(depth, tmp_path) -> None:
    path = tmp_path / "embeddings.bin"
    torch.save({IP_EMBEDDINGS: torch.zeros(2, 1, 32)}, path)
    with pytest.raises(ValueError, match="ip_embeddings: not a safetensors file"):
        pixels_from(depth, path.read_bytes())


def test_from_embeddings_the_image_encoder_does_not_run(depth, monkeypatch) -> None:
    _, saved = images_and_file(depth, ip_image=FACE)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the image encoder ran")

    for encoder in depth.base.encoders.values():
        monkeypatch.setattr(encoder.model, "forward", refuse)
    assert pixels_from(depth, saved.data)


def test_the_full_profile_expects_the_published_encoders_shapes() -> None:
    full = Settings(_env_file=None, weights_profile="full")
    assert ip_embedding_dims(full, IPAdapterVariant.STANDARD) == (1280,)
    assert ip_embedding_dims(full, IPAdapterVariant.PLUS) == (257, 1280)
