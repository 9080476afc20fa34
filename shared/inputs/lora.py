"""LoRA weights given per request (``lora_weights``): the input type, and what the header of a LoRA holds.

A LoRA input is a safetensors file input (``shared.inputs.safetensors_files``) of kind ``lora``: the
API checks its header at submission (``api.intake.file_checks``), the worker fetches, checks and loads
it (``models.sdxl_family.lora``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from shared.inputs.safetensors_files import LORA, METADATA_KEY, SafetensorsFile, SafetensorsInputError

# Kept under the name LoRA code and tests know: the errors of every safetensors file input.
LoraInputError = SafetensorsInputError

LoraURI = Annotated[str, SafetensorsFile(LORA)]
"""A LoRA input: an https URL or an uploaded file's URL of a ``.safetensors`` file."""


def check_lora_header(header: Mapping[str, Any]) -> None:
    """Refuse a safetensors file that is not a LoRA: no tensors, or tensors that are not LoRA layers."""
    names = [name for name in header if name != METADATA_KEY]
    if not names:
        raise LoraInputError("the safetensors file holds no tensors")
    others = [name for name in names if "lora" not in name.lower()]
    if others:
        raise LoraInputError(
            f"not a LoRA: {len(others)} of its {len(names)} tensors are not LoRA layers (e.g. {others[0]!r}); "
            "a full checkpoint or another adapter type cannot be loaded as lora_weights"
        )
