"""Test-only input schemas with images below the top level: lists of images, nested objects, mappings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.inputs.schema import ImageURI, ModelInput
from shared.model_spec import ModelSpec


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: ImageURI
    weight: float = 1.0


class ListOfImagesInput(ModelInput):
    prompt: str = ""
    input_image: ImageURI | None = None
    references: list[ImageURI]
    masks: list[ImageURI] | None = None
    style: Layer | None = None
    layers: list[Layer] = Field(default_factory=list)
    named: dict[str, ImageURI] = Field(default_factory=dict)
    # A string that is not an image: never fetched, staged or checked.
    caption: str = ""


class NestedImagesInput(ModelInput):
    prompt: str = ""
    style: Layer
    layers: list[Layer]
    extra: Layer | None = None


LIST_OF_IMAGES = ModelSpec(
    owner="test",
    name="list-of-images",
    description="A list of images.",
    input_model=ListOfImagesInput,
    queue="gpu.test",
    predictor="tests:none",
    weights_settings=(),
)
