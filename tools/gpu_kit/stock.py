"""Stock diffusers: the plain pipeline class of each model, from the same weights Kiln loads.

The reference Kiln is measured against in the same run: ``from_pretrained`` in the device's dtype
(fp16 on CUDA), diffusers' default attention, one image per call, nothing else. It gets the same
prompt, scheduler, guidance and image inputs as Kiln's batch-1 call, and the conditioning Kiln
prepares ahead of its denoising call (the SD2 depth map, the XL control map) is handed to it
ready-made, so both time the same work: the text encoders, the denoising loop and the VAE decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)

from models.kit.devices import dtype_for, resolve_device
from models.kit.schedulers import SCHEDULERS
from models.registry import find_model
from models.sd2_depth2img.predictor import Depth2ImgJob
from models.sd2_depth2img.weights import sd2_depth2img_source
from models.sdxl_family.layout import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME
from models.sdxl_family.predictor import IPAdapterXLPredictor
from models.sdxl_family.weights import xl_weights
from shared.settings import Settings


@dataclass
class StockPipeline:
    pipe: Any
    # One image, same seed every call.
    call: Callable[[], Any]

    def close(self) -> None:
        self.pipe = None
        self.call = lambda: None


def stock_sd2_depth2img(settings: Settings, job: Depth2ImgJob) -> StockPipeline:
    device = resolve_device(settings.device)
    pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(
        sd2_depth2img_source(settings), torch_dtype=dtype_for(device, settings.cuda_dtype)
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    inputs = job.inputs
    pipe.scheduler = SCHEDULERS[inputs.scheduler].from_config(pipe.scheduler.config)

    def call() -> Any:
        return pipe(
            prompt=inputs.prompt,
            image=job.image,
            depth_map=job.depth_map,
            strength=inputs.prompt_strength,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            generator=torch.Generator(device=device).manual_seed(job.seed),
        )

    return StockPipeline(pipe, call)


def stock_ip_adapter_xl(
    settings: Settings, model: str, predictor: IPAdapterXLPredictor, job: Any, ip_image: Any
) -> StockPipeline:
    """``StableDiffusionXLControlNetPipeline`` with the model's ControlNet and the IP-Adapter, as its docs load them."""
    device = resolve_device(settings.device)
    dtype = dtype_for(device, settings.cuda_dtype)
    weights = xl_weights(settings)
    controlnet = ControlNetModel.from_pretrained(weights.controlnets[predictor.control.name], torch_dtype=dtype)
    vae = {"vae": AutoencoderKL.from_pretrained(weights.vae, torch_dtype=dtype)} if weights.vae else {}
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        weights.base, controlnet=controlnet, torch_dtype=dtype, **vae
    )
    pipe.load_ip_adapter(weights.ip_adapter, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    inputs = job.inputs
    assert find_model(model).input_model is type(inputs)
    pipe.scheduler = SCHEDULERS[inputs.scheduler].from_config(pipe.scheduler.config)
    pipe.set_ip_adapter_scale(inputs.ip_adapter_scale)
    width, height = job.control_at_generation.size

    def call() -> Any:
        return pipe(
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            image=job.control_at_generation,
            ip_adapter_image=ip_image,
            controlnet_conditioning_scale=inputs.controlnet_scale,
            width=width,
            height=height,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            generator=torch.Generator(device=device).manual_seed(job.seed),
        )

    return StockPipeline(pipe, call)
