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

import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionXLControlNetPipeline
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
from models.kit.fast_mode import FastMode, fast_mode_applied, optimised_with_fast_mode, resolve_speed
from models.kit.rows import fit, for_guidance, generators, rows, split_images
from models.kit.schedulers import SCHEDULERS
from models.kit.tensor_files import load_tensor_file, process_tensor_file_cache, safetensors_output
from models.kit.tuning import Tuning
from models.kit.weights.loading import hub_cache_dir, load_model
from models.sdxl_family.base import SharedBase, shared_base
from models.sdxl_family.embeddings import (
    EMBEDDINGS_NAME,
    IP_EMBEDDINGS,
    VARIANT_KEY,
    check_ip_embeddings,
    check_ip_embeddings_header,
)
from models.sdxl_family.ip_adapter_scales import LayerRole, role_row_scales
from models.sdxl_family.layout import ADAPTER_FILES
from models.sdxl_family.lora import LoraWeights, fetch_lora, lora_applied, process_lora_cache
from models.sdxl_family.row_scales import RowScaledControlNetModel, adapter_selected, row_scales_applied
from models.sdxl_family.schema import IPAdapterVariant, IPAdapterXLInput
from models.sdxl_family.spec import ControlKind
from models.sdxl_family.weights import xl_weights
from shared.inputs.schema import Speed
from shared.settings import Settings

CONTROL_MAP_NAME = "control-map"
# Detectors run at the output's short side within these bounds: 512 is what they were trained at
# (controlnet-aux's default), and below 256 a person is too small to find.
MIN_DETECT_RESOLUTION = 256
MAX_DETECT_RESOLUTION = 512


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
            raise ValueError("Kiln encodes image prompts outside the pipeline: pass ip_adapter_image_embeds")
        return [embeds.to(device=device) for embeds in ip_adapter_image_embeds]


def family_pipeline(
    settings: Settings, tuning: Tuning, base: SharedBase, controlnet: Any
) -> tuple[RowwiseIPAdapterXLPipeline, FastMode, list[str]]:
    """A model's ControlNet pipeline over the family's shared base, quiet, with the fast mode's float8
    modules prepared and the device's tuning applied; and what was applied."""
    pipe = RowwiseIPAdapterXLPipeline(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    fast = FastMode.from_settings(settings)
    applied = optimised_with_fast_mode(pipe, tuning, fast)
    return pipe, fast, applied


@dataclass(frozen=True)
class IPAdapterXLJob(PreparedJob):
    inputs: IPAdapterXLInput
    # Output-sized (what return_control_map returns) and generation-sized (what the ControlNet reads).
    control: Image.Image
    control_at_generation: Image.Image
    # ``(2, n, ...)`` = [unconditional, image prompt] embeddings of the n image prompts, for the adapter of
    # the job's ip_adapter_variant (``(2, n, dim)`` standard, ``(2, n, tokens, dim)`` Plus).
    ip_embeds: torch.Tensor
    # With several image prompts (ip_images, or ip_embeddings of several or with weights or masks):
    # ``(n, height, width)`` at the generation size, each image prompt's weight where its mask is white
    # (everywhere without ip_masks) and 0 elsewhere. None for one image prompt attended with ip_adapter_scale.
    ip_masks: torch.Tensor | None = None
    lora: LoraWeights | None = None

    @property
    def group_key(self) -> Hashable:
        lora = self.lora.sha256 if self.lora is not None else None
        several = None if self.ip_masks is None else self.ip_embeds.shape[1]
        return self.control_at_generation.size, _settings_key(self.inputs), lora, several


def _settings_key(inputs: IPAdapterXLInput) -> Hashable:
    """What one pipeline call shares: everything but what each row carries: prompts, images, seeds, the
    image prompts' weights and masks, ip_adapter_scale, ip_adapter_mode and controlnet_scale."""
    if inputs.ip_embeddings is not None:
        # How many the file holds is known once it is read: the job's group key adds it.
        image_prompts: Hashable = ("embeddings", inputs.ip_adapter_scales is None and inputs.ip_masks is None)
    else:
        image_prompts = "one" if inputs.ip_images is None else ("several", len(inputs.ip_images))
    return (
        inputs.ip_adapter_variant,
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
        self.base: SharedBase = shared_base(self.settings, weights)
        self.pipe, self.fast, self.applied = family_pipeline(self.settings, self.tuning, self.base, controlnet)
        # Every prediction gets a fresh scheduler from this config: schedulers keep per-run state.
        self.scheduler_config = self.pipe.scheduler.config
        self.detector = self.load_detector(weights.annotators)
        self.mask_processor = IPAdapterMaskProcessor()
        self.lora_cache = process_lora_cache(self.settings)
        self.embeddings_cache = process_tensor_file_cache("embeddings", self.settings.embeddings_cache_bytes)

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

    def encode_ip_images(self, images: Sequence[Image.Image], variant: IPAdapterVariant) -> torch.Tensor:
        """``(2, n, ...)`` for ``variant``'s adapter: each image encoded on its own, so its embedding is the
        same whatever other images come with it."""
        encoder = self.base.encoders[variant]
        hidden_states = ADAPTER_FILES[variant].reads_hidden_states
        return torch.cat([encoder.encode(image, hidden_states) for image in images], dim=1)

    def load_ip_embeddings(self, inputs: IPAdapterXLInput, ctx: PredictContext) -> torch.Tensor:
        """The ``(2, n, ...)`` embeddings of an ``ip_embeddings`` file, checked against this request and model."""
        assert inputs.ip_embeddings is not None
        given = inputs.model_dump(mode="json")
        try:
            tensor_file = load_tensor_file(
                inputs.ip_embeddings,
                ctx,
                self.embeddings_cache,
                max_bytes=self.settings.embeddings_max_bytes,
                timeout_s=self.settings.lora_fetch_timeout_s,
                check=lambda header: check_ip_embeddings_header(header, given, self.settings),
                name="ip_embeddings",
            )
            # Again for every request: a cached file skipped the header check, which depends on the request.
            check_ip_embeddings(_described(tensor_file.tensors), tensor_file.metadata, given, self.settings)
        except ValueError as exc:
            raise ValueError(f"ip_embeddings: {exc}") from None
        return tensor_file.tensors[IP_EMBEDDINGS].to(device=self.pipe.device, dtype=self.pipe.unet.dtype)

    def weighted_masks(
        self, inputs: IPAdapterXLInput, ctx: PredictContext, size: tuple[int, int], count: int
    ) -> torch.Tensor | None:
        """With several image prompts: ``(n, height, width)``, each one's weight where its mask (binarised,
        stretched to the generation ``size``) is white; its weight everywhere without ip_masks. None for one
        image prompt (``ip_image``, or a file of one given without weights or masks)."""
        if inputs.ip_image is not None or (
            inputs.ip_images is None and count == 1 and inputs.ip_adapter_scales is None and inputs.ip_masks is None
        ):
            return None
        width, height = size
        given = inputs.ip_adapter_scales or [inputs.ip_adapter_scale] * count
        if len(given) != count:
            raise ValueError(f"ip_adapter_scales has {len(given)} entries for {count} image prompts: give one each")
        weights = torch.tensor(given, dtype=torch.float32)[:, None, None]
        if inputs.ip_masks is None:
            return weights.expand(count, height, width).clone()
        if len(inputs.ip_masks) != count:
            raise ValueError(f"ip_masks has {len(inputs.ip_masks)} entries for {count} image prompts: give one each")
        masks = [ctx.load_image(uri) for uri in inputs.ip_masks]
        binary = self.mask_processor.preprocess(masks, height=height, width=width)[:, 0].float()
        return weights * binary

    def prepare(self, inputs: IPAdapterXLInput, ctx: PredictContext) -> IPAdapterXLJob:
        if inputs.ip_embeddings is not None:
            ip_embeds = self.load_ip_embeddings(inputs, ctx)
        else:
            ip_images = [ctx.load_image(uri) for uri in inputs.image_prompts]
            ip_embeds = self.encode_ip_images(ip_images, inputs.ip_adapter_variant)
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
            ip_embeds=ip_embeds,
            ip_masks=self.weighted_masks(inputs, ctx, generation_size, ip_embeds.shape[1]),
            lora=lora,
        )

    def ip_row_scales(self, layout: list[tuple[IPAdapterXLJob, int]], guided: bool) -> dict[LayerRole, torch.Tensor]:
        """Per layer role, ``(rows, n)``: each row's image-prompt scales where its mode listens, else 0.

        With several image prompts the weights ride in each row's masks, so the scales only say which layers listen.
        """
        scales = torch.tensor(
            [
                [job.inputs.ip_adapter_scale] if job.ip_masks is None else [1.0] * job.ip_embeds.shape[1]
                for job, _ in layout
            ],
            dtype=self.pipe.unet.dtype,
            device=self.pipe.device,
        )
        by_role = role_row_scales([job.inputs.ip_adapter_mode for job, _ in layout], scales)
        return {role: for_guidance(tensor, guided) for role, tensor in by_role.items()}

    def controlnet_row_scales(self, layout: list[tuple[IPAdapterXLJob, int]], guided: bool) -> torch.Tensor:
        """``(rows,)``: each row's controlnet_scale."""
        scales = [job.inputs.controlnet_scale for job, _ in layout]
        return for_guidance(torch.tensor(scales, dtype=self.pipe.controlnet.dtype, device=self.pipe.device), guided)

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
                ([torch.cat([job.ip_embeds[:1] for job, _ in layout])] if guided else [])
                + [torch.cat([job.ip_embeds[1:] for job, _ in layout])]
            )
        ]
        cross_attention_kwargs = None
        if jobs[0].ip_masks is not None:
            # The batch key gives every job of the call the same kind of image prompts: all have masks.
            masks = for_guidance(torch.stack([mask for job, _ in layout if (mask := job.ip_masks) is not None]), guided)
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
            adapter_selected(self.pipe.unet, self.adapter_index(jobs[0])),
            fast_mode_applied(self.pipe, fast, guided, float8=jobs[0].lora is None),
            lora_applied(self.pipe, jobs[0].lora, jobs[0].inputs.lora_scale),
            scales,
        ):
            images = self.run_pipeline(jobs, layout, step_callback)
        return [
            self.job_outputs(job, [fit(image, job.control.size) for image in job_images])
            for job, job_images in split_images(images, jobs, lambda job: job.inputs.num_outputs)
        ]

    def adapter_index(self, job: IPAdapterXLJob) -> int:
        """Which of the UNet's IP-Adapters the job's call attends to: its ip_adapter_variant's."""
        return self.base.adapter_index(job.inputs.ip_adapter_variant.value)

    def job_outputs(self, job: IPAdapterXLJob, images: list[Output]) -> list[Output]:
        """The images, then the control map and the embeddings file where asked for."""
        if job.inputs.return_control_map:
            images.append(NamedImage(CONTROL_MAP_NAME, job.control))
        if job.inputs.return_embeddings:
            images.append(
                safetensors_output(
                    EMBEDDINGS_NAME,
                    {IP_EMBEDDINGS: job.ip_embeds.float()},
                    {VARIANT_KEY: job.inputs.ip_adapter_variant.value},
                )
            )
        return images


# safetensors' names of the dtypes an embeddings file may hold.
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _described(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Loaded tensors as a safetensors header describes them: name to dtype name and shape."""
    return {name: (_DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for name, t in tensors.items()}
