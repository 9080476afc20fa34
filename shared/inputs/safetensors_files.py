"""Safetensors files given as inputs (LoRA weights, embeddings): the input type, and what can be checked without torch.

A file input is an https URL or the ``urls.get`` of an uploaded file (Files API) of a ``.safetensors``
file. Its JSON schema is a string with ``x-kiln-accept: .safetensors`` (not ``format: uri``, which
marks image inputs), so the playground offers a file picker for it, and ``x-kiln-file: <kind>``
(``lora``, ``face_embedding``, ...), which says what the file must hold. The API checks at submission
what it can know there (``api.intake.file_checks``: the URL's form and host, an uploaded file's owner,
size and header, the header judged by the model's ``ModelInput.check_file_header``); the worker
fetches, checks and loads the file (``models.kit.tensor_files``). Only the safetensors format is read,
never a pickle.

Nothing here imports the input models: ``shared.inputs.schema`` builds on this module.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from shared.inputs.json_nesting import nests_deeper_than
from shared.settings import Settings

# What marks a file input in a JSON schema (and which files the playground's picker offers).
ACCEPT_KEY = "x-kiln-accept"
SAFETENSORS = ".safetensors"
# What the file must hold: its kind (a kind a model defines; absent for ``LORA``, see ``SafetensorsFile``).
FILE_KEY = "x-kiln-file"
LORA = "lora"
# A safetensors file starts with the header's length (8 bytes, little-endian), then the JSON header.
LENGTH_BYTES = 8
# Headers are about 100 bytes per tensor: a LoRA's is well under a few MiB. Longer is no file we take.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# The entry of a safetensors header that is not a tensor.
METADATA_KEY = "__metadata__"
# A header nests three levels: the object of tensors, each tensor's entry, its shape and offsets.
MAX_HEADER_DEPTH = 3

# One dimension of an expected shape: an exact size, None (any size) or an inclusive (low, high) range.
Dimension = int | None | tuple[int, int]
# The dtypes a tensor may have (safetensors' names: "F32", "F16", "BF16", ...) and the shape it must have.
ExpectedTensor = tuple[Collection[str], Sequence[Dimension]]


class SafetensorsInputError(ValueError):
    """A safetensors file input that cannot be used; the message says why, for the user."""


def check_file_uri(value: str) -> str:
    """An http(s) URL with a host (plain http only reaches the API's own files or, in local
    development, private hosts: ``api.intake.file_checks``)."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"must be an https URL of a {SAFETENSORS} file, not a {parts.scheme or 'relative'!r} URI")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return value


@dataclass(frozen=True)
class SafetensorsFile:
    """Marks a ``str`` input as a ``.safetensors`` file of ``kind``, given by https URL or uploaded
    file's URL: ``FaceEmbeddingURI = Annotated[str, SafetensorsFile("face_embedding")]``.

    Validation checks the URL's form (``check_file_uri``); the JSON schema is a string with
    ``x-kiln-accept`` (the playground's picker) and ``x-kiln-file`` (the kind). LoRA inputs, published
    before there were other kinds, carry no ``x-kiln-file``: a ``.safetensors`` input without one is a
    LoRA, and the version ids of the models that take one did not move.
    """

    kind: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(check_file_uri, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        tagged = {} if self.kind == LORA else {FILE_KEY: self.kind}
        return {"type": "string", ACCEPT_KEY: SAFETENSORS, **tagged}


def _kind_of(schema: Mapping[str, Any]) -> str | None:
    options = (schema, *schema.get("anyOf", ()))
    return next((option.get(FILE_KEY, LORA) for option in options if option.get(ACCEPT_KEY) == SAFETENSORS), None)


@cache
def file_fields(input_model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """``(field, kind)`` of every top-level field of ``input_model`` that holds a safetensors file URL."""
    properties = input_model.model_json_schema().get("properties", {})
    return tuple((name, kind) for name, schema in properties.items() if (kind := _kind_of(schema)) is not None)


def file_inputs(input_model: type[BaseModel], inputs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, kind, url)`` for every safetensors file URL set in ``inputs`` (an input as JSON)."""
    return [(name, kind, inputs[name]) for name, kind in file_fields(input_model) if isinstance(inputs.get(name), str)]


def file_size_cap(kind: str, settings: Settings) -> tuple[int, str]:
    """The most bytes a file of ``kind`` may have, and the setting that says so (for messages)."""
    if kind == LORA:
        return settings.lora_max_bytes, "KILN_LORA_MAX_BYTES"
    return settings.embeddings_max_bytes, "KILN_EMBEDDINGS_MAX_BYTES"


def read_safetensors_header(chunks: Iterable[bytes], max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """The JSON header of a safetensors file from its first bytes, reading no further than the header.

    The format (https://github.com/huggingface/safetensors): 8 bytes of header length, then the
    header, a JSON object of ``name -> {dtype, shape, data_offsets}`` (and an optional ``__metadata__``).
    """
    stream = _Prefix(iter(chunks))
    head = stream.take(LENGTH_BYTES)
    if len(head) < LENGTH_BYTES:
        raise SafetensorsInputError("not a safetensors file: it is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= max_header_bytes:
        raise SafetensorsInputError(
            "not a safetensors file (a pickle or another format?): its header length is implausible"
        )
    raw = stream.take(length)
    if len(raw) < length:
        raise SafetensorsInputError("not a safetensors file: it ends inside its header")
    if nests_deeper_than(raw, MAX_HEADER_DEPTH):
        raise SafetensorsInputError(f"not a safetensors file: its header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SafetensorsInputError("not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict) or not all(
        isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()
        for name, entry in header.items()
        if name != METADATA_KEY
    ):
        raise SafetensorsInputError("not a safetensors file: its header does not describe tensors")
    return header


def header_tensors(header: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of every tensor a safetensors header describes."""
    tensors = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
            raise SafetensorsInputError(f"not a safetensors file: tensor {name!r} has no valid shape")
        tensors[name] = (str(entry["dtype"]), tuple(shape))
    return tensors


def check_tensors(header: Mapping[str, Any], expected: Mapping[str, ExpectedTensor], *, others: bool = False) -> None:
    """Refuse a file whose tensors are not ``expected``: each named tensor present, with one of its
    dtypes and a shape that matches its pattern (a size, None for any size, or an inclusive
    ``(low, high)`` range per dimension); any other tensor is refused unless ``others``. For example
    ``check_tensors(header, {"face_embedding": ({"F32", "F16"}, [512])})``.
    """
    found = header_tensors(header)
    for name, (dtypes, pattern) in expected.items():
        if name not in found:
            raise SafetensorsInputError(f"the file has no tensor {name!r}")
        dtype, shape = found[name]
        if dtype not in dtypes:
            raise SafetensorsInputError(f"tensor {name!r} is {dtype}, expected {' or '.join(sorted(dtypes))}")
        if not shape_matches(shape, pattern):
            raise SafetensorsInputError(f"tensor {name!r} has shape {list(shape)}, expected {describe_shape(pattern)}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected and not others:
        raise SafetensorsInputError(
            f"the file holds {len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]!r}); "
            f"expected only {', '.join(map(repr, expected))}"
        )


def shape_matches(shape: Sequence[int], pattern: Sequence[Dimension]) -> bool:
    """Whether ``shape`` has ``pattern``'s rank and each size matches its dimension's pattern."""
    return len(shape) == len(pattern) and all(
        want is None or (size == want if isinstance(want, int) else want[0] <= size <= want[1])
        for size, want in zip(shape, pattern, strict=True)
    )


def describe_shape(pattern: Sequence[Dimension]) -> str:
    """A shape pattern as messages show it: ``[1..16, *, 2048]``."""
    parts = (
        "*" if want is None else str(want) if isinstance(want, int) else f"{want[0]}..{want[1]}" for want in pattern
    )
    return f"[{', '.join(parts)}]"


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
