"""LoRA weights given per request (``lora_weights``): the input type, and what can be checked without torch.

A LoRA input is an https URL or the ``urls.get`` of an uploaded file (Files API) of a ``.safetensors``
file. Its JSON schema is a string with ``x-kiln-accept: .safetensors`` (not ``format: uri``, which
marks image inputs): the playground offers a file picker for it. The API checks at submission what
it can know there (``api.intake.lora_checks``: the URL's form and host, an uploaded file's owner,
size and header); the worker fetches, checks and loads the file (``models.sdxl_family.lora``). Only
the safetensors format is read, never a pickle.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, WithJsonSchema

from shared.inputs.json_nesting import nests_deeper_than
from shared.inputs.schema import ModelInput

# What marks a LoRA input in a JSON schema (and which files the playground's picker offers).
ACCEPT_KEY = "x-kiln-accept"
SAFETENSORS = ".safetensors"
# A safetensors file starts with the header's length (8 bytes, little-endian), then the JSON header.
LENGTH_BYTES = 8
# Headers are about 100 bytes per tensor: a LoRA's is well under a few MiB. Longer is not a LoRA.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# The entry of a safetensors header that is not a tensor.
METADATA_KEY = "__metadata__"
# A header nests three levels: the object of tensors, each tensor's entry, its shape and offsets.
MAX_HEADER_DEPTH = 3


class LoraInputError(ValueError):
    """A LoRA input that cannot be used; the message says why, for the user."""


def check_lora_uri(value: str) -> str:
    """An http(s) URL with a host (plain http only reaches the API's own files or, in local
    development, private hosts: ``api.intake.lora_checks``)."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"must be an https URL of a {SAFETENSORS} file, not a {parts.scheme or 'relative'!r} URI")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return value


LoraURI = Annotated[
    str,
    AfterValidator(check_lora_uri),
    WithJsonSchema({"type": "string", ACCEPT_KEY: SAFETENSORS}),
]
"""A LoRA input: an https URL or an uploaded file's URL of a ``.safetensors`` file."""


def _is_lora(schema: Mapping[str, Any]) -> bool:
    options = (schema, *schema.get("anyOf", ()))
    return any(option.get(ACCEPT_KEY) == SAFETENSORS for option in options)


@cache
def lora_fields(input_model: type[ModelInput]) -> tuple[str, ...]:
    """The top-level fields of ``input_model`` that hold a LoRA URL."""
    properties = input_model.model_json_schema().get("properties", {})
    return tuple(name for name, schema in properties.items() if _is_lora(schema))


def lora_inputs(input_model: type[ModelInput], inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, url)`` for every LoRA URL set in ``inputs`` (an input as JSON)."""
    return [(name, inputs[name]) for name in lora_fields(input_model) if isinstance(inputs.get(name), str)]


def read_safetensors_header(chunks: Iterable[bytes], max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """The JSON header of a safetensors file from its first bytes, reading no further than the header.

    The format (https://github.com/huggingface/safetensors): 8 bytes of header length, then the
    header, a JSON object of ``name -> {dtype, shape, data_offsets}`` (and an optional ``__metadata__``).
    """
    stream = _Prefix(iter(chunks))
    head = stream.take(LENGTH_BYTES)
    if len(head) < LENGTH_BYTES:
        raise LoraInputError("not a safetensors file: it is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= max_header_bytes:
        raise LoraInputError("not a safetensors file (a pickle or another format?): its header length is implausible")
    raw = stream.take(length)
    if len(raw) < length:
        raise LoraInputError("not a safetensors file: it ends inside its header")
    if nests_deeper_than(raw, MAX_HEADER_DEPTH):
        raise LoraInputError(f"not a safetensors file: its header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise LoraInputError("not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict) or not all(
        isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()
        for name, entry in header.items()
        if name != METADATA_KEY
    ):
        raise LoraInputError("not a safetensors file: its header does not describe tensors")
    return header


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


class _Prefix:
    """Reads exact byte counts from a stream of chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = bytearray()

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        taken, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
        return taken
