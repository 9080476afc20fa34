"""The per-device knobs: off on the CPU by default, and when forced on, applied without changing results."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0

from models.kit import tuning as tuning_module
from models.kit.tuning import Tuning, fuse_qkv, parse_buckets, snap_to_bucket
from models.sd2_depth2img.predictor import Depth2ImgPredictor
from models.sd2_depth2img.schema import Depth2ImgInput
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tests.support.worker_inputs import FAST, INPUTS

BUCKETS = parse_buckets("1024x1024,1152x896,896x1152,768x768,512x512")


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1024, 1024), (1024, 1024)),
        ((512, 384), (512, 512)),
        ((1200, 900), (1152, 896)),
        ((800, 1100), (896, 1152)),
        ((700, 700), (768, 768)),
    ],
)
def test_sizes_snap_to_the_nearest_bucket(size, bucket) -> None:
    assert snap_to_bucket(size, BUCKETS) == bucket
    assert snap_to_bucket(size, ()) == size


def test_a_bucket_that_is_not_a_multiple_of_8_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        parse_buckets("1000x1001")


def test_on_the_cpu_every_knob_defaults_off(make_settings: Callable[..., Settings]) -> None:
    tuning = Tuning.from_settings(make_settings())
    assert (
        tuning.max_batch_size,
        tuning.prefetch,
        tuning.async_upload,
        tuning.channels_last,
        tuning.fuse_qkv,
        tuning.compile,
        tuning.buckets,
        tuning.dtype,
    ) == (1, False, False, False, False, False, (), torch.float32)


def test_on_cuda_the_safe_knobs_default_on(make_settings: Callable[..., Settings], monkeypatch) -> None:
    monkeypatch.setattr("models.kit.tuning.resolve_device", lambda name: torch.device("cuda"))
    tuning = Tuning.from_settings(make_settings(cuda_dtype="bfloat16"))
    assert (
        tuning.max_batch_size,
        tuning.prefetch,
        tuning.async_upload,
        tuning.channels_last,
        tuning.fuse_qkv,
        tuning.dtype,
    ) == (4, True, True, True, True, torch.bfloat16)
    assert tuning.buckets == () and not tuning.compile
    assert Tuning.from_settings(make_settings(torch_compile=True)).buckets == parse_buckets(Settings().size_buckets)


def _run(predictor: Depth2ImgPredictor) -> np.ndarray:
    return np.asarray(predictor.predict(Depth2ImgInput(**FAST | INPUTS[0]), FakeContext())[0]).astype(int)


def test_fused_qkv_channels_last_and_compile_keep_the_image(make_settings: Callable[..., Settings]) -> None:
    plain = Depth2ImgPredictor(make_settings())
    plain.setup()
    tuned = Depth2ImgPredictor(
        make_settings(
            fuse_qkv=True, channels_last=True, torch_compile=True, compile_backend="eager", snap_to_buckets=False
        )
    )
    tuned.setup()
    unet = tuned.pipe.unet
    assert isinstance(unet, torch._dynamo.eval_frame.OptimizedModule)
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in unet._orig_mod.attn_processors.values())
    assert unet._orig_mod.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(tuned.pipe.vae.decoder, torch._dynamo.eval_frame.OptimizedModule)
    assert "vae:decoder_compiled(eager)" in tuned.applied
    assert np.abs(_run(plain) - _run(tuned)).max() <= 2


def test_a_compiled_decoder_is_a_view_that_leaves_a_shared_vae_eager(make_settings: Callable[..., Settings]) -> None:
    plain = Depth2ImgPredictor(make_settings())
    plain.setup()
    vae = plain.pipe.vae
    decoder = vae.decoder
    view = tuning_module._decoder_compiled(
        vae, Tuning.from_settings(make_settings(torch_compile=True, compile_backend="eager"))
    )
    assert vae.decoder is decoder and isinstance(view.decoder, torch._dynamo.eval_frame.OptimizedModule)
    assert view.decoder._orig_mod is decoder and view.post_quant_conv.weight is vae.post_quant_conv.weight
    latents = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(view.decode(latents).sample, vae.decode(latents).sample)


class Breaking(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x + 1


def test_a_graph_break_in_a_compiled_model_is_an_error_not_a_model_run_in_pieces(
    make_settings: Callable[..., Settings],
) -> None:
    compiled = tuning_module.compiled(
        Breaking(), Tuning.from_settings(make_settings(torch_compile=True, compile_backend="eager"))
    )
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compiled(torch.zeros(2))
    # KILN_COMPILE_FULLGRAPH=false: the module runs, in pieces.
    settings = make_settings(torch_compile=True, compile_backend="eager", compile_fullgraph=False)
    in_pieces = tuning_module.compiled(Breaking(), Tuning.from_settings(settings))
    assert torch.equal(in_pieces(torch.zeros(2)), torch.ones(2))


def test_fusing_is_refused_where_it_would_drop_ip_adapter_processors() -> None:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    model = torch.nn.Module()
    model.attn_processors = {"a": IPAdapterAttnProcessor2_0(hidden_size=8, cross_attention_dim=8)}
    assert fuse_qkv(model) is False


def test_a_compiled_model_takes_every_shape_its_buckets_and_batches_allow_without_failing(
    make_settings: Callable[..., Settings],
) -> None:
    tuning = Tuning.from_settings(
        make_settings(torch_compile=True, compile_backend="eager", max_batch_size=2, size_buckets="64x64,128x128")
    )
    rows = 2 * tuning_module.MAX_OUTPUTS * tuning_module.GUIDANCE_ROWS
    kinds = tuning_module.STEP_KINDS * tuning_module.MODEL_FAMILIES
    assert tuning_module.recompile_limit(tuning) == 2 * rows * kinds
    # dynamo's defaults: 8 graphs per frame, past which a fullgraph frame fails the call.
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        compiled = tuning_module.compiled(torch.nn.Linear(4, 4), tuning)
        assert torch._dynamo.config.recompile_limit == tuning_module.recompile_limit(tuning)
        for count in range(1, rows + 1):
            assert compiled(torch.zeros(count, 4)).shape == (count, 4)
