"""How output images are encoded: ``output_format`` (png, jpg, webp) and ``output_quality``, as on Replicate.

Every model's input schema declares the two fields with ``output_format_field`` and
``output_quality_field`` (at the end of its ``x-order``); the runner encodes each output with
``encoding_of(inputs)``: the bytes, the content type the output is stored and served with, and the
file extension of its name. Light (Pillow only): the API imports the schemas.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum
from typing import Any

from PIL import Image
from pydantic import Field

from shared.inputs.schema import ModelInput

DEFAULT_QUALITY = 90


# No docstring: it would become the enum's description in every input schema (and its version id).
class OutputFormat(str, Enum):
    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"


_CONTENT_TYPES = {OutputFormat.PNG: "image/png", OutputFormat.JPG: "image/jpeg", OutputFormat.WEBP: "image/webp"}
_PILLOW_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.JPG: "JPEG", OutputFormat.WEBP: "WEBP"}


def output_format_field(order: int) -> Any:
    """The ``output_format`` field of a model's inputs, at ``x-order`` ``order``."""
    return Field(
        default=OutputFormat.PNG,
        description="Format of the output images: png (lossless), jpg or webp (smaller; see output_quality).",
        json_schema_extra={"x-order": order},
    )


def output_quality_field(order: int) -> Any:
    """The ``output_quality`` field of a model's inputs, at ``x-order`` ``order``."""
    return Field(
        default=DEFAULT_QUALITY,
        ge=1,
        le=100,
        description="Quality of jpg and webp outputs, 1 (smallest) to 100 (best); png ignores it.",
        json_schema_extra={"x-order": order},
    )


@dataclass(frozen=True)
class OutputEncoding:
    format: OutputFormat = OutputFormat.PNG
    quality: int = DEFAULT_QUALITY

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return self.format.value

    def encode(self, image: Image.Image) -> bytes:
        """The image in this format: png lossless, jpg and webp lossy at ``quality`` (jpg has no alpha)."""
        buffer = io.BytesIO()
        if self.format is OutputFormat.PNG:
            image.save(buffer, format="PNG")
        else:
            rgb = image if image.mode in {"RGB", "L"} else image.convert("RGB")
            rgb.save(buffer, format=_PILLOW_FORMATS[self.format], quality=self.quality)
        return buffer.getvalue()


def encoding_of(inputs: ModelInput) -> OutputEncoding:
    """How a prediction's outputs are encoded: its ``output_format`` and ``output_quality`` (PNG for a
    model without them)."""
    output_format = getattr(inputs, "output_format", OutputFormat.PNG)
    quality = getattr(inputs, "output_quality", DEFAULT_QUALITY)
    return OutputEncoding(OutputFormat(output_format), int(quality))
