"""Inputs of ``kiln/instantid-xl``: whose likeness (a photo, several, or a saved embedding), where the face
goes, how strongly each part holds, and the SDXL knobs the other XL models have."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from models.sdxl_family.schema import (
    checked_size,
    guidance_field,
    height_field,
    lora_scale_field,
    lora_weights_field,
    num_outputs_field,
    scheduler_field,
    seed_field,
    steps_field,
    width_field,
)
from shared.inputs.lora import LoraURI
from shared.inputs.output_formats import OutputFormat, output_format_field, output_quality_field
from shared.inputs.safetensors_files import SafetensorsFile
from shared.inputs.schema import PROMPTS_AND_SEED, ImageURI, ModelInput, PromptText, Scheduler, Speed, speed_field
from shared.settings import Settings

MAX_FACE_IMAGES = 4
# The kind of file face_embedding takes (``x-kiln-file``): what return_embeddings writes.
FACE_EMBEDDING_KIND = "face_embedding"
# The ways to say whose likeness; one is required.
IDENTITY_FIELDS = ("face_image", "face_images", "face_embedding")

FaceEmbeddingURI = Annotated[str, SafetensorsFile(FACE_EMBEDDING_KIND)]


class InstantIDXLInput(ModelInput):
    # The optional image fields a warm-up run sets (worker.warmup): none, it runs from a face embedding.
    warmup_images: ClassVar[tuple[str, ...]] = ()
    standalone_fields: ClassVar[frozenset[str]] = PROMPTS_AND_SEED

    prompt: PromptText = Field(
        default="a portrait photo of a person",
        description="Text that describes the output: the person's likeness comes from the face inputs.",
        json_schema_extra={"x-order": 0},
    )
    negative_prompt: PromptText | None = Field(
        default="lowres, blurry, worst quality, deformed face",
        description="Things the output should not contain.",
        json_schema_extra={"x-order": 1},
    )
    face_image: ImageURI | None = Field(
        default=None,
        description="A photo of the person: the largest face in it is used. Give it, face_images or face_embedding.",
        json_schema_extra={"x-order": 2},
    )
    face_images: list[ImageURI] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FACE_IMAGES,
        description=f"1 to {MAX_FACE_IMAGES} photos of the same person: their face embeddings are averaged "
        "(the keypoints come from the first). Instead of face_image.",
        json_schema_extra={"x-order": 3},
    )
    face_embedding: FaceEmbeddingURI | None = Field(
        default=None,
        description="A face saved by an earlier prediction (its return_embeddings output, a .safetensors file "
        "by https URL or uploaded file): no photo is analysed again. Instead of face_image.",
        json_schema_extra={"x-order": 4},
    )
    pose_image: ImageURI | None = Field(
        default=None,
        description="Where to place the face: its keypoints come from the largest face in this image instead "
        "of the face photo (or the saved embedding's, or a frontal face in the middle).",
        json_schema_extra={"x-order": 5},
    )
    ip_adapter_scale: float = Field(
        default=0.8,
        ge=0.0,
        le=1.5,
        description="Identity strength: how closely the face follows the person's (0 ignores it).",
        json_schema_extra={"x-order": 6},
    )
    identitynet_strength: float = Field(
        default=0.8,
        ge=0.0,
        le=1.5,
        description="How strictly the face keeps the keypoints' placement (the keypoint ControlNet's scale).",
        json_schema_extra={"x-order": 7},
    )
    enhance_face_region: bool = Field(
        default=True,
        description="The keypoint ControlNet acts only around the face, leaving the rest to the prompt.",
        json_schema_extra={"x-order": 8},
    )
    lora_weights: LoraURI | None = lora_weights_field(9)
    lora_scale: float = lora_scale_field(10)
    num_inference_steps: int = steps_field(11)
    guidance_scale: float = guidance_field(12)
    scheduler: Scheduler = scheduler_field(13)
    width: int = width_field(14)
    height: int = height_field(15)
    num_outputs: int = num_outputs_field(16)
    seed: int | None = seed_field(17)
    return_embeddings: bool = Field(
        default=False,
        description="Also return the face as a .safetensors file (the last output): face_embedding and "
        "face_kps, to pass back as face_embedding.",
        json_schema_extra={"x-order": 18},
    )
    speed: Speed | None = speed_field(order=19)
    output_format: OutputFormat = output_format_field(order=20)
    output_quality: int = output_quality_field(order=21)

    @field_validator("width", "height")
    @classmethod
    def _size_is_a_multiple_of_8_within_the_cap(cls, value: int, info: ValidationInfo) -> int:
        return checked_size(value, info)

    @model_validator(mode="after")
    def _one_identity(self) -> InstantIDXLInput:
        given = [name for name in IDENTITY_FIELDS if getattr(self, name) is not None]
        if not given:
            raise ValueError("whose likeness? give face_image, face_images (a list) or face_embedding")
        if len(given) > 1:
            raise ValueError(f"give one of face_image, face_images or face_embedding, not {' and '.join(given)}")
        return self

    @classmethod
    def check_file_header(
        cls, field: str, kind: str, header: Mapping[str, Any], inputs: Mapping[str, Any], settings: Settings
    ) -> None:
        if kind == FACE_EMBEDDING_KIND:
            from models.instantid_xl.embeddings import check_face_embedding_header

            check_face_embedding_header(header)
            return
        super().check_file_header(field, kind, header, inputs, settings)
