"""The XL weight builders: tiny SDXL layout, compact random annotators, random-full configs.

Full-size models are only ever built on the meta device here: shapes without memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors import safe_open
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DPTConfig,
    DPTForDepthEstimation,
)

from models.ip_adapter_depth_xl import fake_weights as depth_weights
from models.ip_adapter_openpose_xl import fake_weights as openpose_weights
from models.sd2_depth2img.fake_weights import load_config
from models.sdxl_family.fake_weights import builder as family_builder
from models.sdxl_family.fake_weights.annotators import (
    build_tiny_annotators,
    compact_random_state_dict,
    ensure_tiny_annotators,
)
from models.sdxl_family.fake_weights.builder import (
    build_tiny_sdxl,
    build_xl_weights,
    ensure_random_full_sdxl,
    ensure_tiny_sdxl,
    make_conditioning_observable,
    random_ip_adapter_weights,
)
from models.sdxl_family.fake_weights.layout_configs import XLConfigs, full_configs, tiny_configs
from models.sdxl_family.layout import (
    BASE_DIR,
    IMAGE_ENCODER_DIR,
    IP_ADAPTER_DIR,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT_NAME,
    VAE_FP16_DIR,
    control_kinds,
)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_tiny_sdxl_builds_the_full_layout_identically_twice(tmp_path: Path) -> None:
    build_tiny_sdxl(tmp_path / "one")
    build_tiny_sdxl(tmp_path / "two")
    one = _files(tmp_path / "one")
    assert one == _files(tmp_path / "two")
    ip_folder = f"{IP_ADAPTER_DIR}/{IP_ADAPTER_SUBFOLDER}"
    for path in (
        f"{BASE_DIR}/model_index.json",
        f"{BASE_DIR}/unet/diffusion_pytorch_model.safetensors",
        f"{BASE_DIR}/tokenizer_2/vocab.json",
        f"{VAE_FP16_DIR}/config.json",
        *(f"{kind.folder}/diffusion_pytorch_model.safetensors" for kind in control_kinds()),
        f"{ip_folder}/{IP_ADAPTER_WEIGHT_NAME}",
        f"{ip_folder}/{IMAGE_ENCODER_DIR}/model.safetensors",
    ):
        assert path in one, path
    assert not any(name.startswith(f"{BASE_DIR}/image_encoder") for name in one)


def test_ensure_builds_each_layout_once_into_its_profile_folder(weights_dir: Path) -> None:
    assert ensure_tiny_sdxl(weights_dir) == weights_dir / "tiny" / "sdxl"
    assert ensure_tiny_annotators(weights_dir, control_kinds()) == weights_dir / "tiny" / "annotators"
    marker = weights_dir / "tiny" / "sdxl" / "kiln-tiny.json"
    built_at = marker.stat().st_mtime_ns
    ensure_tiny_sdxl(weights_dir)
    assert marker.stat().st_mtime_ns == built_at


def test_the_tiny_text_encoders_cover_the_tiny_tokenizer(weights_dir: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(ensure_tiny_sdxl(weights_dir) / BASE_DIR / "tokenizer_2")
    for config in (tiny_configs().text_encoder, tiny_configs().text_encoder_2):
        assert len(tokenizer) <= config["vocab_size"]
        assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


@pytest.mark.parametrize("configs", [tiny_configs(), full_configs()], ids=["tiny", "random-full"])
def test_configs_fit_together_like_sdxl(configs: XLConfigs) -> None:
    unet, text, text_2 = configs.unet, configs.text_encoder, configs.text_encoder_2
    assert unet["cross_attention_dim"] == text["hidden_size"] + text_2["hidden_size"]
    assert (
        unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + text_2["projection_dim"]
    )
    vae_downscale = 2 ** (len(configs.vae["block_out_channels"]) - 1)
    for controlnet in configs.controlnets.values():
        assert 2 ** (len(controlnet["conditioning_embedding_out_channels"]) - 1) == vae_downscale
        for key in ("block_out_channels", "cross_attention_dim", "addition_time_embed_dim", "down_block_types"):
            assert controlnet[key] == unet[key], key
    assert configs.vae_fp16["force_upcast"] is False


def _meta_models(configs: XLConfigs) -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(configs.unet),
            "vae": AutoencoderKL.from_config(configs.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs.text_encoder)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs.text_encoder_2)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.image_encoder)),
            **{
                f"controlnet_{kind}": ControlNetModel.from_config(config)
                for kind, config in configs.controlnets.items()
            },
        }


def test_the_random_full_configs_have_the_published_parameter_counts() -> None:
    models = _meta_models(full_configs())
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
        "image_encoder": 1_844_907_264,  # OpenCLIP ViT-bigG/14, "1844.9M" on the h94/IP-Adapter card
        "controlnet_depth": 1_251_014_160,
        "controlnet_openpose": 1_251_014_160,
    }
    ip_adapter = random_ip_adapter_weights(models["unet"], full_configs().image_encoder["projection_dim"])
    # ip-adapter_sdxl.safetensors: 70 cross-attention layers, 703 MB in fp16.
    assert sum(name.endswith("to_k_ip.weight") for name in ip_adapter) == 70
    assert sum(tensor.numel() for tensor in ip_adapter.values()) * 2 == pytest.approx(703e6, rel=0.01)


def test_the_random_full_sd2_depth2img_configs_have_the_published_parameter_counts() -> None:
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(load_config("sd2_depth_unet")),
            "vae": AutoencoderKL.from_config(load_config("sd2_depth_vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**load_config("sd2_depth_text_encoder"))),
            "depth_estimator": DPTForDepthEstimation(DPTConfig(**load_config("sd2_depth_estimator"))),
        }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    # SD 2's UNet (865,910,724) plus the depth channel of conv_in (320 x 3 x 3); OpenCLIP ViT-H/14 text.
    assert counts["unet"] == 865_910_724 + 320 * 9
    assert counts["vae"] == 83_653_863
    assert counts["text_encoder"] == 340_387_840
    # DPT-Hybrid (Intel/dpt-hybrid-midas, "123M" on its card): a ViT-B/16 over a BiT-R50 stem.
    assert counts["depth_estimator"] == pytest.approx(123e6, rel=0.01)


def test_random_full_builds_the_published_configs_in_fp16_once(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_build(folder: Path, configs: XLConfigs, **options) -> None:
        calls.append((configs, options))
        (folder / "built").write_text("")

    monkeypatch.setattr(family_builder, "build_xl_weights", fake_build)
    folder = ensure_random_full_sdxl(tmp_path, torch.device("cpu"))
    assert ensure_random_full_sdxl(tmp_path, torch.device("cpu")) == folder == tmp_path / "random-full" / "sdxl"
    [(configs, options)] = calls
    assert configs == full_configs()
    assert options["dtype"] == torch.float16 and options["device"] == "cpu"
    assert not options.get("observable_controlnets", False)


def _control_effect(controlnet: ControlNetModel) -> float:
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    outputs = [
        controlnet(
            sample, 10, text, controlnet_cond=torch.rand(1, 3, 64, 64), added_cond_kwargs=added, return_dict=False
        )
        for _ in range(2)
    ]
    return max((a - b).abs().max().item() for a, b in zip(outputs[0][0], outputs[1][0], strict=True))


def test_a_fresh_controlnet_ignores_its_control_image_until_made_observable() -> None:
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_config(tiny_configs().controlnets["depth"])
    assert _control_effect(controlnet) == 0
    make_conditioning_observable(controlnet)
    assert _control_effect(controlnet) > 0.1


def test_annotators_build_identically_and_compactly(tmp_path: Path) -> None:
    build_tiny_annotators(tmp_path / "one", control_kinds())
    build_tiny_annotators(tmp_path / "two", control_kinds())
    one = _files(tmp_path / "one")
    assert one == _files(tmp_path / "two")
    assert sorted(one) == sorted(
        [
            depth_weights.MIDAS_FILENAME,
            openpose_weights.BODY_FILENAME,
            openpose_weights.HAND_FILENAME,
            openpose_weights.FACE_FILENAME,
        ]
    )
    # 250 M parameters: 500 MB in fp16 if every tensor had storage of its own.
    assert sum(len(content) for content in one.values()) < 80e6


def test_a_compact_state_dict_loads_strictly_into_the_real_model() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.LayerNorm(8 * 6 * 6),
        torch.nn.Linear(8 * 6 * 6, 4),
    )
    state = compact_random_state_dict(model)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model[1].running_var, torch.ones(8)) and torch.equal(model[3].weight, torch.ones(288))
    assert torch.equal(model[4].bias, torch.zeros(4))
    assert model[0].weight.std().item() == pytest.approx(27**-0.5, rel=0.3)
    assert model[4].weight.std().item() == pytest.approx(288**-0.5, rel=0.3)
    assert state["4.bias"].untyped_storage().nbytes() == 2


def test_a_half_precision_build_saves_every_weight_in_fp16(tmp_path: Path) -> None:
    build_xl_weights(tmp_path, tiny_configs(), seed=0, dtype=torch.float16)
    weight_files = sorted(tmp_path.rglob("*.safetensors"))
    # Base (5), fp16 VAE, two ControlNets, two image encoders, three IP-Adapters... minus the shared: 12 files.
    assert len(weight_files) == 12
    for path in weight_files:
        with safe_open(path, framework="pt") as weights:
            assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}, path  # noqa: SIM118 - safe_open is not iterable
