"""The predictor of the SDXL + IP-Adapter + ControlNet models: one SDXL base per process, then predict.

``kiln/ip-adapter-depth-xl`` and ``kiln/ip-adapter-openpose-xl`` differ only in their ControlNet and
in the controlnet-aux detector that turns ``input_image`` into a control map (their ``ControlKind``).
Both run ``StableDiffusionXLControlNetPipeline`` over the same UNet, VAE, text encoders and IP-Adapter
image encoder: whichever predictor sets up first loads that base, and the IP-Adapter into it (loading
replaces the UNet's attention processors, so it happens once), and the other builds its pipeline
from the same objects. A worker serving both models holds one SDXL in memory.

The IP-Adapter and ControlNet strengths (and the InstantStyle mode) are tensors with one entry per
batch row (``models.sdxl_family.row_scales``): predictions that differ only in them share a pipeline
call, and a compiled UNet or ControlNet sees the same graph whatever their values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from models.kit.contract import (
    NamedImage,
    Output,
    PredictContext,
    Predictor,
    PreparedJob,
    StepCallback,
    resolve_seed,
)
from models.kit.devices import resolve_device
from models.kit.fast_mode import FastMode, device_capability, fast_mode_applied, resolve_speed
from models.kit.rows import fit, generators, rows, split_images
from models.kit.schedulers import SCHEDULERS
from models.kit.tuning import Tuning, optimise_pipeline
from models.kit.weights.loading import hub_cache_dir, load_model, load_pipeline
from models.sdxl_family.ip_adapter_scales import LayerRole, role_row_scales
from models.sdxl_family.layout import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME
from models.sdxl_family.lora import LoraWeights, fetch_lora, lora_applied, process_lora_cache
from models.sdxl_family.row_scales import RowScaledControlNetModel, install_row_scaled_processors, row_scales_applied
from models.sdxl_family.schema import IPAdapterXLInput
from models.sdxl_family.spec import ControlKind
from models.sdxl_family.weights import XLWeights, xl_weights
from shared.inputs.schema import Speed
from shared.settings import Settings

CONTROL_MAP_NAME = "control-map"
# Detectors run at the output's short side within these bounds: 512 is what they were trained at
# (controlnet-aux's default), and below 256 a person is too small to find.
MIN_DETECT_RESOLUTION = 256
MAX_DETECT_RESOLUTION = 512


_bases: dict[tuple[str, ...], dict[str, Any]] = {}
_bases_lock = threading.Lock()


def _load_base(settings: Settings, weights: XLWeights) -> dict[str, Any]:
    vae = {"vae": load_model(AutoencoderKL, weights.vae, settings)} if weights.vae else {}
    base = load_pipeline(StableDiffusionXLPipeline, weights.base, settings, **vae)
    base.load_ip_adapter(
        weights.ip_adapter,
        subfolder=IP_ADAPTER_SUBFOLDER,
        weight_name=IP_ADAPTER_WEIGHT_NAME,
        cache_dir=hub_cache_dir(settings),
    )
    install_row_scaled_processors(base.unet)
    return base.components


def shared_base_components(settings: Settings, weights: XLWeights) -> dict[str, Any]:
    """The SDXL base's components with the IP-Adapter loaded, loaded once per process and weights.

    Every XL predictor of the process gets the same UNet, VAE, text encoders, tokenizers, image
    encoder and feature extractor objects.
    """
    key = (
        weights.base,
        str(weights.vae),
        weights.ip_adapter,
        str(resolve_device(settings.device)),
        str(hub_cache_dir(settings)),
    )
    with _bases_lock:
        if key not in _bases:
            _bases[key] = _load_base(settings, weights)
        return dict(_bases[key])


def detect_resolution(width: int, height: int) -> int:
    """The side the detector works at: the output's short side, within the detectors' useful range."""
    return max(MIN_DETECT_RESOLUTION, min(MAX_DETECT_RESOLUTION, min(width, height)))


class RowwiseIPAdapterXLPipeline(StableDiffusionXLControlNetPipeline):
    """The ControlNet SDXL pipeline, taking IP-Adapter image embeddings already laid out per row.

    diffusers repeats given embeddings for every row of the batch (one image prompt for all rows);
    a batch of predictions has one image prompt per row, so the embeddings passed here are used as
    they are: ``[negative rows, positive rows]`` with guidance, else the positive rows.
    """

    def prepare_ip_adapter_image_embeds(
        self, ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
    ):
        if ip_adapter_image_embeds is None:
            return super().prepare_ip_adapter_image_embeds(
                ip_adapter_image, None, device, num_images_per_prompt, do_classifier_free_guidance
            )
        return [embeds.to(device=device) for embeds in ip_adapter_image_embeds]


@dataclass(frozen=True)
class IPAdapterXLJob(PreparedJob):
    inputs: IPAdapterXLInput
    # Output-sized (what return_control_map returns) and generation-sized (what the ControlNet reads).
    control: Image.Image
    control_at_generation: Image.Image
    # Per IP-Adapter: ``(2, n, dim)`` = [unconditional, image prompt] embeddings of the n image prompts.
    ip_embeds: tuple[torch.Tensor, ...]
    # With ip_images: ``(n, height, width)`` at the generation size, each image prompt's weight where its
    # mask is white (everywhere without ip_masks) and 0 elsewhere. None for ip_image alone.
    ip_masks: torch.Tensor | None = None
    lora: LoraWeights | None = None

    @property
    def group_key(self) -> Hashable:
        lora = self.lora.sha256 if self.lora is not None else None
        return self.control_at_generation.size, _settings_key(self.inputs), lora


def _settings_key(inputs: IPAdapterXLInput) -> Hashable:
    """What one pipeline call shares: everything but what each row carries: prompts, images, seeds, the
    image prompts' weights and masks, ip_adapter_scale, ip_adapter_mode and controlnet_scale."""
    image_prompts = "one" if inputs.ip_images is None else ("several", len(inputs.ip_images))
    return (
        inputs.width,
        inputs.height,
        inputs.num_inference_steps,
        inputs.guidance_scale,
        inputs.scheduler,
        image_prompts,
        inputs.control_guidance_start,
        inputs.control_guidance_end,
        inputs.negative_prompt is None,
        inputs.lora_weights,
        inputs.lora_scale if inputs.lora_weights is not None else None,
        inputs.speed,
    )


class IPAdapterXLPredictor(Predictor[IPAdapterXLInput, IPAdapterXLJob]):
    """SDXL steered by an image prompt (IP-Adapter) and laid out by a control map (ControlNet).

    A model of the family subclasses it with its ``control`` kind and nothing else.
    """

    # Which ControlNet and detector to load: the model's kind, declared in its folder.
    control: ClassVar[ControlKind]

    def load_detector(self, source: str) -> Any:
        """The kind's controlnet-aux detector from ``source`` (a folder or a Hub id), on the device.

        It is called as ``detector(image, detect_resolution=n, image_resolution=n)`` and returns
        the control map as a PIL image.
        """
        detector = self.control.detector_class().from_pretrained(source, cache_dir=hub_cache_dir(self.settings))
        return detector.to(resolve_device(self.settings.device))

    def setup(self) -> None:
        self.tuning = Tuning.from_settings(self.settings)
        weights = xl_weights(self.settings)
        controlnet = load_model(RowScaledControlNetModel, weights.controlnets[self.control.name], self.settings)
        self.pipe = RowwiseIPAdapterXLPipeline(**shared_base_components(self.settings, weights), controlnet=controlnet)
        self.pipe.set_progress_bar_config(disable=True)
        self.fast = FastMode.from_settings(self.settings)
        self.applied = self.fast.prepare_float8(self.pipe, self.tuning.device, device_capability(self.tuning.device))
        self.applied += optimise_pipeline(self.pipe, self.tuning)
        # Every prediction gets a fresh scheduler from this config: schedulers keep per-run state.
        self.scheduler_config = self.pipe.scheduler.config
        self.detector = self.load_detector(weights.annotators)
        self.mask_processor = IPAdapterMaskProcessor()
        self.lora_cache = process_lora_cache(self.settings)

    def batch_key(self, inputs: IPAdapterXLInput) -> Hashable:
        return _settings_key(inputs)

    def control_map(self, inputs: IPAdapterXLInput, ctx: PredictContext) -> Image.Image:
        """The given ``control_image``, or the map the detector extracts from ``input_image``; output-sized."""
        size = (inputs.width, inputs.height)
        if inputs.control_image is not None:
            control = ctx.load_image(inputs.control_image)
        else:
            assert inputs.input_image is not None  # the schema requires one of the two
            image = ctx.load_image(inputs.input_image)
            started = time.monotonic()
            resolution = detect_resolution(*size)
            control = self.detector(image, detect_resolution=resolution, image_resolution=resolution)
            ctx.log(f"Extracted the {self.control.name} map in {time.monotonic() - started:.2f} s")
        return control.convert("RGB").resize(size, Image.Resampling.BICUBIC)

    @torch.no_grad()
    def encode_ip_image(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        return tuple(self.pipe.prepare_ip_adapter_image_embeds(image, None, self.pipe.device, 1, True))

    def encode_ip_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, ...]:
        """Per IP-Adapter, ``(2, n, dim)``: each image encoded on its own, so its embedding is the same
        whatever other images come with it."""
        encoded = [self.encode_ip_image(image) for image in images]
        return tuple(torch.cat([embeds[k] for embeds in encoded], dim=1) for k in range(len(encoded[0])))

    def weighted_masks(
        self, inputs: IPAdapterXLInput, ctx: PredictContext, size: tuple[int, int]
    ) -> torch.Tensor | None:
        """With ip_images: ``(n, height, width)``, each image's weight where its mask (binarised, stretched
        to the generation ``size``) is white; its weight everywhere without ip_masks."""
        if inputs.ip_images is None:
            return None
        width, height = size
        weights = torch.tensor(inputs.image_prompt_weights, dtype=torch.float32)[:, None, None]
        if inputs.ip_masks is None:
            return weights.expand(len(inputs.ip_images), height, width).clone()
        masks = [ctx.load_image(uri) for uri in inputs.ip_masks]
        binary = self.mask_processor.preprocess(masks, height=height, width=width)[:, 0].float()
        return weights * binary

    def prepare(self, inputs: IPAdapterXLInput, ctx: PredictContext) -> IPAdapterXLJob:
        ip_images = [ctx.load_image(uri) for uri in inputs.image_prompts]
        control = self.control_map(inputs, ctx)
        generation_size = self.tuning.generation_size(control.size)
        lora = None
        if inputs.lora_weights is not None:
            lora = fetch_lora(inputs.lora_weights, ctx, self.pipe, self.lora_cache, self.settings)
        return IPAdapterXLJob(
            seed=resolve_seed(inputs.seed, ctx),
            inputs=inputs,
            control=control,
            control_at_generation=fit(control, generation_size),
            ip_embeds=self.encode_ip_images(ip_images),
            ip_masks=self.weighted_masks(inputs, ctx, generation_size),
            lora=lora,
        )

    def ip_row_scales(self, layout: list[tuple[IPAdapterXLJob, int]], guided: bool) -> dict[LayerRole, torch.Tensor]:
        """Per layer role, ``(rows, n)``: each row's image-prompt scales where its mode listens, else 0.

        With ip_images the weights ride in each row's masks, so the scales only say which layers listen.
        """
        scales = torch.tensor(
            [
                [job.inputs.ip_adapter_scale] if job.inputs.ip_images is None else [1.0] * len(job.inputs.ip_images)
                for job, _ in layout
            ],
            dtype=self.pipe.unet.dtype,
            device=self.pipe.device,
        )
        by_role = role_row_scales([job.inputs.ip_adapter_mode for job, _ in layout], scales)
        return {role: _for_guidance(tensor, guided) for role, tensor in by_role.items()}

    def controlnet_row_scales(self, layout: list[tuple[IPAdapterXLJob, int]], guided: bool) -> torch.Tensor:
        """``(rows,)``: each row's controlnet_scale."""
        scales = [job.inputs.controlnet_scale for job, _ in layout]
        return _for_guidance(torch.tensor(scales, dtype=self.pipe.controlnet.dtype, device=self.pipe.device), guided)

    def run_pipeline(
        self,
        jobs: Sequence[IPAdapterXLJob],
        layout: list[tuple[IPAdapterXLJob, int]],
        step_callback: StepCallback,
        **overrides: Any,
    ) -> Any:
        """One pipeline call over the rows of ``jobs`` with a fresh scheduler; ``overrides`` replace arguments."""
        first = jobs[0].inputs
        width, height = jobs[0].control_at_generation.size
        self.pipe.scheduler = SCHEDULERS[first.scheduler].from_config(self.scheduler_config)
        guided = first.guidance_scale > 1
        ip_embeds = [
            torch.cat(
                ([torch.cat([job.ip_embeds[k][:1] for job, _ in layout])] if guided else [])
                + [torch.cat([job.ip_embeds[k][1:] for job, _ in layout])]
            )
            for k in range(len(jobs[0].ip_embeds))
        ]
        cross_attention_kwargs = None
        if first.ip_images is not None:
            # The batch key gives every job of the call the same kind of image prompts: all have masks.
            masks = _for_guidance(
                torch.stack([mask for job, _ in layout if (mask := job.ip_masks) is not None]), guided
            )
            cross_attention_kwargs = {"ip_adapter_masks": [masks.to(self.pipe.device)]}
        arguments = {
            "prompt": [job.inputs.prompt for job, _ in layout],
            "negative_prompt": None
            if first.negative_prompt is None
            else [job.inputs.negative_prompt for job, _ in layout],
            "image": [job.control_at_generation for job, _ in layout],
            "ip_adapter_image_embeds": ip_embeds,
            "cross_attention_kwargs": cross_attention_kwargs,
            "controlnet_conditioning_scale": 1.0,
            "control_guidance_start": first.control_guidance_start,
            "control_guidance_end": first.control_guidance_end,
            "width": width,
            "height": height,
            "num_inference_steps": first.num_inference_steps,
            "guidance_scale": first.guidance_scale,
            "num_images_per_prompt": 1,
            "generator": generators(layout, self.pipe.device),
            "callback_on_step_end": step_callback,
        }
        return self.pipe(**arguments | overrides).images

    def generate(self, jobs: Sequence[IPAdapterXLJob], step_callback: StepCallback) -> list[list[Output]]:
        layout = rows(jobs, lambda job: job.inputs.num_outputs)
        guided = jobs[0].inputs.guidance_scale > 1
        fast = self.fast if resolve_speed(jobs[0].inputs.speed, self.settings) is Speed.FAST else None
        # The attention processors belong to the UNet both XL predictors share: their scales are set per call.
        scales = row_scales_applied(
            self.pipe, self.ip_row_scales(layout, guided), self.controlnet_row_scales(layout, guided)
        )
        with (
            fast_mode_applied(self.pipe, fast, guided, float8=jobs[0].lora is None),
            lora_applied(self.pipe, jobs[0].lora, jobs[0].inputs.lora_scale),
            scales,
        ):
            images = self.run_pipeline(jobs, layout, step_callback)
        outputs = []
        for job, job_images in split_images(images, jobs, lambda job: job.inputs.num_outputs):
            job_outputs: list[Output] = [fit(image, job.control.size) for image in job_images]
            if job.inputs.return_control_map:
                job_outputs.append(NamedImage(CONTROL_MAP_NAME, job.control))
            outputs.append(job_outputs)
        return outputs


def _for_guidance(per_row: torch.Tensor, guided: bool) -> torch.Tensor:
    """Per-row values for the UNet's batch: [unconditional rows, conditional rows] with guidance."""
    return torch.cat([per_row, per_row]) if guided else per_row
