"""Safetensors file inputs without torch: the kind-tagged schema, finding the file fields of an input,
the tensor checks a model makes on a header, and the default ``ModelInput.check_file_header``."""

from __future__ import annotations

import json
import struct
from typing import Annotated, Any

import pytest
from pydantic import ValidationError

from shared.inputs.lora import LoraURI
from shared.inputs.safetensors_files import (
    SafetensorsFile,
    SafetensorsInputError,
    check_tensors,
    file_fields,
    file_inputs,
    file_size_cap,
    header_tensors,
    read_safetensors_header,
)
from shared.inputs.schema import ModelInput
from shared.settings import Settings

FaceEmbeddingURI = Annotated[str, SafetensorsFile("face_embedding")]


class WithFiles(ModelInput):
    prompt: str = ""
    lora_weights: LoraURI | None = None
    face_embedding: FaceEmbeddingURI
    # Not a file: a plain string field is never taken for one.
    note: str | None = None


def header(**tensors: tuple[str, list[int]]) -> dict[str, Any]:
    """A safetensors header of ``name=(dtype, shape)`` tensors (offsets unchecked here)."""
    return {"__metadata__": {"by": "test"}} | {
        name: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]} for name, (dtype, shape) in tensors.items()
    }


def test_a_file_input_is_a_string_the_picker_offers_tagged_with_its_kind() -> None:
    props = WithFiles.model_json_schema()["properties"]
    assert props["face_embedding"] == {
        "type": "string",
        "x-kiln-accept": ".safetensors",
        "x-kiln-file": "face_embedding",
        "title": "Face Embedding",
    }
    # A LoRA input's schema is what it was before kinds: no x-kiln-file means a LoRA (version ids stay).
    assert props["lora_weights"]["anyOf"][0] == {"type": "string", "x-kiln-accept": ".safetensors"}
    assert "format" not in props["face_embedding"]  # not an image input


@pytest.mark.parametrize(
    ("uri", "message"), [("ftp://e.com/f.safetensors", "must be an https URL"), ("https:///f", "no host")]
)
def test_a_file_input_must_be_an_http_url_with_a_host(uri: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WithFiles.model_validate({"face_embedding": uri})


def test_file_fields_and_inputs_name_each_field_with_its_kind() -> None:
    assert file_fields(WithFiles) == (("lora_weights", "lora"), ("face_embedding", "face_embedding"))
    url = "https://e.com/face.safetensors"
    assert file_inputs(WithFiles, {"face_embedding": url, "lora_weights": None, "note": "x"}) == [
        ("face_embedding", "face_embedding", url)
    ]


def test_each_kind_has_its_size_cap_and_names_its_setting() -> None:
    settings = Settings(_env_file=None, lora_max_bytes=5000, embeddings_max_bytes=3000)
    assert file_size_cap("lora", settings) == (5000, "KILN_LORA_MAX_BYTES")
    assert file_size_cap("face_embedding", settings) == (3000, "KILN_EMBEDDINGS_MAX_BYTES")


def test_header_tensors_lists_dtypes_and_shapes_without_the_metadata() -> None:
    raw = json.dumps(header(a=("F32", [512]), b=("F16", [2, 4, 2048]))).encode()
    parsed = read_safetensors_header([struct.pack("<Q", len(raw)) + raw])
    assert header_tensors(parsed) == {"a": ("F32", (512,)), "b": ("F16", (2, 4, 2048))}
    with pytest.raises(SafetensorsInputError, match="tensor 'c' has no valid shape"):
        header_tensors(header(c=("F32", [-1])))


EXPECTED = {
    "face_embedding": ({"F32", "F16"}, [512]),
    "image_embeds": ({"F32"}, [(1, 4), None, 2048]),
}


def test_check_tensors_accepts_shapes_within_their_patterns() -> None:
    check_tensors(header(face_embedding=("F16", [512]), image_embeds=("F32", [4, 77, 2048])), EXPECTED)
    check_tensors(header(face_embedding=("F32", [512]), image_embeds=("F32", [1, 1, 2048])), EXPECTED)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"image_embeds": ("F32", [1, 1, 2048])}, "the file has no tensor 'face_embedding'"),
        (
            {"face_embedding": ("F32", [256]), "image_embeds": ("F32", [1, 1, 2048])},
            "tensor 'face_embedding' has shape [256], expected [512]",
        ),
        (
            {"face_embedding": ("F32", [1, 512]), "image_embeds": ("F32", [1, 1, 2048])},
            "tensor 'face_embedding' has shape [1, 512], expected [512]",
        ),
        (
            {"face_embedding": ("F32", [512]), "image_embeds": ("F32", [5, 1, 2048])},
            "tensor 'image_embeds' has shape [5, 1, 2048], expected [1..4, *, 2048]",
        ),
        (
            {"face_embedding": ("BF16", [512]), "image_embeds": ("F32", [1, 1, 2048])},
            "tensor 'face_embedding' is BF16, expected F16 or F32",
        ),
        (
            {"face_embedding": ("F32", [512]), "image_embeds": ("F32", [1, 1, 2048]), "extra": ("F32", [1])},
            "1 unexpected tensor(s) (e.g. 'extra'); expected only 'face_embedding', 'image_embeds'",
        ),
    ],
    ids=["missing", "wrong-size", "wrong-rank", "out-of-range", "dtype", "extra"],
)
def test_check_tensors_says_which_tensor_is_wrong_and_what_was_expected(
    tensors: dict[str, tuple[str, list[int]]], message: str
) -> None:
    with pytest.raises(SafetensorsInputError) as refused:
        check_tensors(header(**tensors), EXPECTED)
    assert message in str(refused.value)


def test_check_tensors_may_let_other_tensors_through() -> None:
    tensors = header(face_embedding=("F32", [512]), image_embeds=("F32", [1, 1, 2048]), extra=("F32", [1]))
    check_tensors(tensors, EXPECTED, others=True)


def test_the_default_header_check_takes_loras_only() -> None:
    settings = Settings(_env_file=None)
    lora = header(**{"unet.a.lora_A.weight": ("F32", [4, 8]), "unet.a.lora_B.weight": ("F32", [8, 4])})
    WithFiles.check_file_header("lora_weights", "lora", lora, {}, settings)
    with pytest.raises(SafetensorsInputError, match="not a LoRA"):
        WithFiles.check_file_header("lora_weights", "lora", header(w=("F32", [2])), {}, settings)
    with pytest.raises(SafetensorsInputError, match="this model takes no face_embedding files"):
        WithFiles.check_file_header("face_embedding", "face_embedding", lora, {}, settings)
