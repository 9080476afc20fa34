"""Safetensors file inputs of any kind at submission (``api.intake.file_checks``): each uploaded file is
the caller's, within its kind's cap, and has a header the model takes in that field (its
``check_file_header``); a failure is a 422 naming ``input.<field>``. A test-only model with an embedding
field stands in for the models that take one."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
from safetensors.torch import save
from torch import zeros

from api.errors import ProblemError
from api.intake.file_checks import check_file_inputs
from shared.inputs.lora import LoraURI
from shared.inputs.safetensors_files import SafetensorsFile, SafetensorsInputError, check_tensors
from shared.inputs.schema import ModelInput
from shared.settings import Settings
from tests.support.uploaded_files import UploadedFiles

BASE_URL = "http://kiln.test"


class EmbeddingInput(ModelInput):
    prompt: str = ""
    lora_weights: LoraURI | None = None
    face_embedding: Annotated[str, SafetensorsFile("face_embedding")] | None = None

    @classmethod
    def check_file_header(
        cls, field: str, kind: str, header: Mapping[str, Any], inputs: Mapping[str, Any], settings: Settings
    ) -> None:
        if kind != "face_embedding":
            return super().check_file_header(field, kind, header, inputs, settings)
        check_tensors(header, {"face_embedding": ({"F32", "F16"}, [512])})
        if inputs.get("prompt") == "no faces":  # what a model takes may depend on the other inputs
            raise SafetensorsInputError("a face embedding needs a prompt that allows faces")


class WithoutEmbeddingCheck(ModelInput):
    face_embedding: Annotated[str, SafetensorsFile("face_embedding")] | None = None


SPEC = SimpleNamespace(input_model=EmbeddingInput)
FACE = save({"face_embedding": zeros(512)})
FILES = {
    "good": ("me", FACE, len(FACE)),
    "short": ("me", save({"face_embedding": zeros(256)}), 1100),
    "pickle": ("me", pickle.dumps({"face_embedding": [0.0] * 512}), 2000),
    "big": ("me", FACE, 40 * 2**20),
    "theirs": ("someone else", FACE, len(FACE)),
    "lora": ("me", save({"unet.a.lora_A.weight": zeros(2, 2)}), 200),
}


def url(name: str) -> str:
    return f"{BASE_URL}/v1/files/{name:x<26}"


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setattr("api.intake.file_checks.resolve_checked", lambda url, *, allow_private: None)
    return SimpleNamespace(
        settings=Settings(_env_file=None), files=UploadedFiles({f"{name:x<26}": entry for name, entry in FILES.items()})
    )


def submit(services: SimpleNamespace, spec: Any = SPEC, headers: dict[str, Any] | None = None, **inputs: Any) -> None:
    check_file_inputs(spec, inputs, services, "me", BASE_URL, headers)


def refused(services: SimpleNamespace, spec: Any = SPEC, **inputs: Any) -> str:
    """The detail of the 422 that submitting ``inputs`` answers."""
    with pytest.raises(ProblemError) as refusal:
        submit(services, spec, **inputs)
    assert refusal.value.status == 422
    return refusal.value.detail


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("short", "input.face_embedding: tensor 'face_embedding' has shape [256], expected [512]"),
        ("pickle", "input.face_embedding: not a safetensors file"),
        ("big", f"is {40 * 2**20} bytes, more than the {32 * 2**20} allowed (KILN_EMBEDDINGS_MAX_BYTES)"),
        ("theirs", "input.face_embedding: file theirs"),
        ("lora", "input.face_embedding: the file has no tensor 'face_embedding'"),
    ],
)
def test_an_uploaded_file_the_field_cannot_take_is_a_422_naming_the_field(
    services: SimpleNamespace, file: str, message: str
) -> None:
    detail = refused(services, face_embedding=url(file))
    assert message in detail and detail.startswith("input.face_embedding: ")


def test_a_remote_file_must_be_https(services: SimpleNamespace) -> None:
    detail = refused(services, face_embedding="http://files.example/face.safetensors")
    assert detail.startswith("input.face_embedding: must be an https URL")
    submit(services, face_embedding="https://files.example/face.safetensors")


def test_each_field_is_checked_for_its_own_kind(services: SimpleNamespace) -> None:
    submit(services, face_embedding=url("good"), lora_weights=url("lora"))
    detail = refused(services, face_embedding=url("good"), lora_weights=url("good"))
    assert detail.startswith("input.lora_weights: not a LoRA")


def test_a_model_refuses_kinds_it_does_not_take_by_default(services: SimpleNamespace) -> None:
    detail = refused(services, SimpleNamespace(input_model=WithoutEmbeddingCheck), face_embedding=url("good"))
    assert detail == "input.face_embedding: this model takes no face_embedding files"


def test_a_file_repeated_across_a_batch_is_read_once_and_judged_with_each_items_inputs(
    services: SimpleNamespace,
) -> None:
    headers: dict[str, Any] = {}
    for prompt in ("a", "b", "c"):
        submit(services, headers=headers, prompt=prompt, face_embedding=url("good"))
    assert services.files.opened == [f"{'good':x<26}"]
    with pytest.raises(ProblemError) as refusal:
        submit(services, headers=headers, prompt="no faces", face_embedding=url("good"))
    assert refusal.value.detail == "input.face_embedding: a face embedding needs a prompt that allows faces"
    assert len(services.files.opened) == 1
