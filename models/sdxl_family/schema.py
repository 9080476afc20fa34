"""Inputs of the SDXL + IP-Adapter + ControlNet models (``kiln/ip-adapter-depth-xl``,
``kiln/ip-adapter-openpose-xl``): a structure reference, image prompts and the knobs between them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from shared.inputs.lora import LoraURI
from shared.inputs.output_formats import OutputFormat, output_format_field, output_quality_field
from shared.inputs.safetensors_files import SafetensorsFile
from shared.inputs.schema import PROMPTS_AND_SEED, ImageURI, ModelInput, PromptText, Scheduler, Speed, speed_field
from shared.settings import Settings

SIZE_MULTIPLE = 8
MAX_IP_IMAGES = 4
MAX_IP_WEIGHT = 2.0


# No docstring: it would become the enum's description in the input schema (and its version id).
class IPAdapterMode(str, Enum):
    FULL = "full"
    STYLE = "style"
    COMPOSITION = "composition"
    STYLE_AND_COMPOSITION = "style_and_composition"


# No docstring, as above. Which IP-Adapter reads the image prompts (h94/IP-Adapter's SDXL adapters):
# standard (ip-adapter_sdxl, ViT-bigG image embeddings), plus (ip-adapter-plus_sdxl_vit-h, 16 tokens from
# ViT-H patch features: closer to the image's details) and plus-face (the same, trained on cropped faces).
class IPAdapterVariant(str, Enum):
    STANDARD = "standard"
    PLUS = "plus"
    PLUS_FACE = "plus-face"


IPWeight = Annotated[float, Field(ge=0.0, le=MAX_IP_WEIGHT)]
# The ways to give image prompts; one is required.
IMAGE_PROMPT_FIELDS = ("ip_image", "ip_images", "ip_embeddings")
# The kind of file ip_embeddings takes (``x-kiln-file``): what return_embeddings writes
# (models.sdxl_family.embeddings).
IP_EMBEDDINGS_KIND = "ip_embeddings"
IPEmbeddingsURI = Annotated[str, SafetensorsFile(IP_EMBEDDINGS_KIND)]


# The SDXL knobs every model of the family takes (the XL models, kiln/instantid-xl), each at its model's
# x-order: one wording and one range everywhere.
def lora_weights_field(order: int) -> Any:
    return Field(
        default=None,
        description="LoRA for SDXL to apply to this prediction: an https URL or an uploaded file's URL of a "
        ".safetensors file. Loaded for this prediction only.",
        json_schema_extra={"x-order": order},
    )


def lora_scale_field(order: int) -> Any:
    return Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="How strongly lora_weights applies: 0 is as if no LoRA were given.",
        json_schema_extra={"x-order": order},
    )


def steps_field(order: int) -> Any:
    return Field(
        default=30, ge=1, le=100, description="Number of denoising steps.", json_schema_extra={"x-order": order}
    )


def guidance_field(order: int) -> Any:
    return Field(
        default=5.0,
        ge=1.0,
        le=20.0,
        description="Scale for classifier-free guidance; SDXL looks best around 4-8.",
        json_schema_extra={"x-order": order},
    )


def scheduler_field(order: int) -> Any:
    return Field(
        default=Scheduler.DPM_SOLVER_MULTISTEP, description="Denoising scheduler.", json_schema_extra={"x-order": order}
    )


def width_field(order: int) -> Any:
    return Field(
        default=1024,
        ge=64,
        description="Output width in pixels, a multiple of 8 (SDXL is trained at 1024x1024).",
        json_schema_extra={"x-order": order},
    )


def height_field(order: int) -> Any:
    return Field(
        default=1024,
        ge=64,
        description="Output height in pixels, a multiple of 8.",
        json_schema_extra={"x-order": order},
    )


def num_outputs_field(order: int) -> Any:
    return Field(default=1, ge=1, le=4, description="Number of images to output.", json_schema_extra={"x-order": order})


def seed_field(order: int) -> Any:
    return Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed. Leave blank to randomize.",
        json_schema_extra={"x-order": order},
    )


def checked_size(value: int, info: ValidationInfo) -> int:
    """A width or height: a multiple of 8, within the deployment's cap (``limits`` in the validation context)."""
    if value % SIZE_MULTIPLE:
        raise ValueError(f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
    limits = (info.context or {}).get("limits")
    if limits is not None and value > limits.max_side:
        raise ValueError(f"must be at most {limits.max_side}, got {value}")
    return value


class IPAdapterXLInput(ModelInput):
    # The optional image fields a warm-up run sets (worker.warmup): the structure and one image prompt.
    warmup_images: ClassVar[tuple[str, ...]] = ("input_image", "ip_image")
    standalone_fields: ClassVar[frozenset[str]] = PROMPTS_AND_SEED

    prompt: PromptText = Field(
        default="",
        description="Text that describes the output; the image prompts (ip_image or ip_images) add style and content.",
        json_schema_extra={"x-order": 0},
    )
    negative_prompt: PromptText | None = Field(
        default="lowres, blurry, worst quality",
        description="Things the output should not contain.",
        json_schema_extra={"x-order": 1},
    )
    input_image: ImageURI | None = Field(
        default=None,
        description="Structure reference: its depth map (depth model) or pose (openpose model) is extracted "
        "and followed. Required unless control_image is given.",
        json_schema_extra={"x-order": 2},
    )
    ip_image: ImageURI | None = Field(
        default=None,
        description="Image prompt for the IP-Adapter: the output borrows its content and style. "
        "Give it or ip_images (several image prompts), not both.",
        json_schema_extra={"x-order": 3},
    )
    ip_images: list[ImageURI] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description=f"Several image prompts (1 to {MAX_IP_IMAGES}: a face, a product, a setting...), each with its "
        "own weight (ip_adapter_scales) and optionally confined to a region (ip_masks). Instead of ip_image.",
        json_schema_extra={"x-order": 4},
    )
    ip_masks: list[ImageURI] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description="One mask per image of ip_images, in order: white where that image applies, black where "
        "it does not (stretched to the output size).",
        json_schema_extra={"x-order": 5},
    )
    control_image: ImageURI | None = Field(
        default=None,
        description="A ready control map (depth or pose image) to use instead of extracting one from input_image.",
        json_schema_extra={"x-order": 6},
    )
    ip_adapter_scale: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="How strongly the image prompt steers the output: 0 ignores it, 1 follows it closely. "
        "With ip_images, the weight of each image that ip_adapter_scales does not set.",
        json_schema_extra={"x-order": 7},
    )
    ip_adapter_scales: list[IPWeight] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description=f"One weight per image of ip_images, in order (0 to {MAX_IP_WEIGHT:g}): 0 leaves that "
        "image out. Default: ip_adapter_scale for each.",
        json_schema_extra={"x-order": 8},
    )
    ip_adapter_mode: IPAdapterMode = Field(
        default=IPAdapterMode.FULL,
        description="What the image prompts steer (InstantStyle's per-block scales): full (everything), style "
        "(colours, textures, mood), composition (layout), or style_and_composition.",
        json_schema_extra={"x-order": 9},
    )
    controlnet_scale: float = Field(
        default=0.8,
        ge=0.0,
        le=2.0,
        description="How strictly the output follows the control map: 0 ignores it.",
        json_schema_extra={"x-order": 10},
    )
    control_guidance_start: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the denoising steps after which the ControlNet starts to apply.",
        json_schema_extra={"x-order": 11},
    )
    control_guidance_end: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the denoising steps after which the ControlNet stops applying; "
        "more than control_guidance_start.",
        json_schema_extra={"x-order": 12},
    )
    lora_weights: LoraURI | None = lora_weights_field(13)
    lora_scale: float = lora_scale_field(14)
    num_inference_steps: int = steps_field(15)
    guidance_scale: float = guidance_field(16)
    scheduler: Scheduler = scheduler_field(17)
    width: int = width_field(18)
    height: int = height_field(19)
    num_outputs: int = num_outputs_field(20)
    seed: int | None = seed_field(21)
    return_control_map: bool = Field(
        default=False,
        description="Also return the control map the model followed, as the last output.",
        json_schema_extra={"x-order": 22},
    )
    ip_adapter_variant: IPAdapterVariant = Field(
        default=IPAdapterVariant.STANDARD,
        description="Which IP-Adapter reads the image prompts: standard (the image's overall content and style), "
        "plus (closer to its details) or plus-face (a face's features: give a cropped face as the image prompt).",
        json_schema_extra={"x-order": 23},
    )
    ip_embeddings: IPEmbeddingsURI | None = Field(
        default=None,
        description="Image-prompt embeddings saved by an earlier prediction (its return_embeddings output, a "
        ".safetensors file by https URL or uploaded file) instead of ip_image or ip_images: the images are not "
        "encoded again. Its ip_adapter_variant must be this prediction's.",
        json_schema_extra={"x-order": 24},
    )
    return_embeddings: bool = Field(
        default=False,
        description="Also return the image prompts' embeddings as a .safetensors file (the last output), to pass "
        "back as ip_embeddings.",
        json_schema_extra={"x-order": 25},
    )
    speed: Speed | None = speed_field(order=26)
    output_format: OutputFormat = output_format_field(order=27)
    output_quality: int = output_quality_field(order=28)

    @field_validator("width", "height")
    @classmethod
    def _size_is_a_multiple_of_8_within_the_cap(cls, value: int, info: ValidationInfo) -> int:
        return checked_size(value, info)

    @model_validator(mode="after")
    def _needs_a_structure_reference(self) -> IPAdapterXLInput:
        if self.input_image is None and self.control_image is None:
            raise ValueError("input_image is required unless control_image is given")
        return self

    @model_validator(mode="after")
    def _one_kind_of_image_prompt(self) -> IPAdapterXLInput:
        given_kinds = [name for name in IMAGE_PROMPT_FIELDS if getattr(self, name) is not None]
        if len(given_kinds) > 1:
            raise ValueError(f"give one kind of image prompt, not both {' and '.join(given_kinds)}")
        if not given_kinds:
            raise ValueError("an image prompt is required: ip_image, ip_images (a list) or ip_embeddings")
        for name in ("ip_adapter_scales", "ip_masks"):
            given = getattr(self, name)
            if given is None:
                continue
            if self.ip_image is not None:
                raise ValueError(f"{name} goes with ip_images (one per image); ip_image takes ip_adapter_scale")
            if self.ip_images is not None and len(given) != len(self.ip_images):
                raise ValueError(f"{name} has {len(given)} entries for {len(self.ip_images)} ip_images: give one each")
        return self

    @model_validator(mode="after")
    def _control_guidance_window(self) -> IPAdapterXLInput:
        if self.control_guidance_start >= self.control_guidance_end:
            raise ValueError(
                f"control_guidance_start ({self.control_guidance_start:g}) must be less than "
                f"control_guidance_end ({self.control_guidance_end:g})"
            )
        return self

    @classmethod
    def check_file_header(
        cls, field: str, kind: str, header: Mapping[str, Any], inputs: Mapping[str, Any], settings: Settings
    ) -> None:
        if kind == IP_EMBEDDINGS_KIND:
            from models.sdxl_family.embeddings import check_ip_embeddings_header

            check_ip_embeddings_header(header, inputs, settings)
            return
        super().check_file_header(field, kind, header, inputs, settings)

    @property
    def image_prompts(self) -> list[str]:
        """The image prompts: ``ip_image`` alone, or ``ip_images``."""
        return [self.ip_image] if self.ip_image is not None else list(self.ip_images or ())

    @property
    def image_prompt_weights(self) -> list[float]:
        """One weight per image prompt: ``ip_adapter_scales``, else ``ip_adapter_scale`` for each."""
        if self.ip_adapter_scales is not None:
            return list(self.ip_adapter_scales)
        return [self.ip_adapter_scale] * len(self.image_prompts)
