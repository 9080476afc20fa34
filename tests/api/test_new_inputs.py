"""Output formats, the XL models' newer inputs and LoRA inputs: schemas, validation, encodings, and the
checks the API makes at submission."""

from __future__ import annotations

import io
import pickle
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from api.errors import ProblemError
from api.intake.file_checks import check_file_inputs
from models.registry import MODELS
from models.sdxl_family.schema import IPAdapterXLInput
from shared.inputs.lora import LoraInputError, check_lora_header
from shared.inputs.output_formats import OutputEncoding, OutputFormat, encoding_of
from shared.inputs.safetensors_files import file_fields, read_safetensors_header
from shared.security.ssrf import URLRefused
from shared.settings import Settings
from tests.support.uploaded_files import UploadedFiles

XL = MODELS["kiln/ip-adapter-depth-xl"]
BASE_URL = "http://kiln.test"
IMAGE = "https://e.com/a.png"


def xl(**fields: Any) -> IPAdapterXLInput:
    return IPAdapterXLInput.model_validate({"input_image": IMAGE} | fields)


# --- Output formats --------------------------------------------------------------------------------

MAGIC = {OutputFormat.PNG: (b"\x89PNG\r\n\x1a\n",), OutputFormat.JPG: (b"\xff\xd8\xff",), OutputFormat.WEBP: (b"RIFF",)}


@pytest.mark.parametrize("output_format", list(OutputFormat))
def test_each_format_has_its_magic_bytes_content_type_and_extension(output_format: OutputFormat) -> None:
    encoding = OutputEncoding(output_format, 90)
    data = encoding.encode(Image.effect_noise((64, 48), 60).convert("RGB"))
    assert data.startswith(MAGIC[output_format])
    if output_format is OutputFormat.WEBP:
        assert data[8:12] == b"WEBP"
    expected = {"png": ("image/png", "PNG"), "jpg": ("image/jpeg", "JPEG"), "webp": ("image/webp", "WEBP")}
    content_type, pillow_format = expected[output_format.value]
    assert encoding.content_type == content_type and encoding.extension == output_format.value
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == pillow_format and decoded.size == (64, 48)


@pytest.mark.parametrize("output_format", [OutputFormat.JPG, OutputFormat.WEBP])
def test_quality_trades_bytes_for_fidelity(output_format: OutputFormat) -> None:
    image = Image.effect_noise((128, 128), 80).convert("RGB")
    low, high = (len(OutputEncoding(output_format, quality).encode(image)) for quality in (10, 95))
    assert low < high


def test_every_model_offers_output_format_and_quality_last_with_ranges_and_defaults() -> None:
    for spec in MODELS.values():
        schema = spec.input_model.model_json_schema()
        props = schema["properties"]
        orders = sorted(props[name]["x-order"] for name in props)
        assert props["output_format"]["x-order"] == orders[-2] and props["output_quality"]["x-order"] == orders[-1]
        assert schema["$defs"]["OutputFormat"]["enum"] == ["png", "jpg", "webp"]
        assert props["output_format"]["default"] == "png"
        assert (props["output_quality"]["minimum"], props["output_quality"]["maximum"]) == (1, 100)
        assert props["output_quality"]["default"] == 90
        assert encoding_of(spec.input_model.model_validate(_minimal(spec.ref))) == OutputEncoding()
        with pytest.raises(ValidationError, match="output_quality"):
            spec.input_model.model_validate(_minimal(spec.ref) | {"output_quality": 0})
        with pytest.raises(ValidationError, match="output_format"):
            spec.input_model.model_validate(_minimal(spec.ref) | {"output_format": "gif"})
    parsed = xl(ip_image=IMAGE, output_format="webp", output_quality=40)
    assert encoding_of(parsed) == OutputEncoding(OutputFormat.WEBP, 40)


def _minimal(ref: str) -> dict[str, Any]:
    if ref == "kiln/instantid-xl":
        return {"face_image": IMAGE}
    return {"input_image": IMAGE} | ({} if ref == "kiln/sd2-depth2img" else {"ip_image": IMAGE})


# --- The XL inputs ---------------------------------------------------------------------------------


def test_the_xl_schema_lists_every_input_in_order_with_ranges() -> None:
    schema = IPAdapterXLInput.model_json_schema()
    props = schema["properties"]
    assert [props[name]["x-order"] for name in props] == list(range(len(props)))
    assert "required" not in schema  # ip_image or ip_images: the validator says which is missing
    images = props["ip_images"]["anyOf"][0]
    assert images["items"] == {"type": "string", "format": "uri"} and (images["minItems"], images["maxItems"]) == (1, 4)
    assert props["ip_masks"]["anyOf"][0]["items"]["format"] == "uri"
    weights = props["ip_adapter_scales"]["anyOf"][0]
    assert weights["items"] == {"type": "number", "minimum": 0.0, "maximum": 2.0} and weights["maxItems"] == 4
    assert schema["$defs"]["IPAdapterMode"]["enum"] == ["full", "style", "composition", "style_and_composition"]
    for name, low, high, default in (
        ("control_guidance_start", 0, 1, 0),
        ("control_guidance_end", 0, 1, 1),
        ("lora_scale", 0, 2, 1),
    ):
        assert (props[name]["minimum"], props[name]["maximum"], props[name]["default"]) == (low, high, default)
    assert props["lora_weights"]["anyOf"][0] == {"type": "string", "x-kiln-accept": ".safetensors"}
    assert file_fields(IPAdapterXLInput) == (("lora_weights", "lora"), ("ip_embeddings", "ip_embeddings"))
    assert props["ip_embeddings"]["anyOf"][0]["x-kiln-accept"] == ".safetensors"
    assert schema["$defs"]["IPAdapterVariant"]["enum"] == ["standard", "plus", "plus-face"]
    assert props["ip_adapter_variant"]["default"] == "standard" and props["return_embeddings"]["default"] is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "an image prompt is required"),
        ({"ip_image": IMAGE, "ip_images": [IMAGE]}, "not both"),
        ({"ip_images": []}, "at least 1 item"),
        ({"ip_images": [IMAGE] * 5}, "at most 4 items"),
        ({"ip_images": [IMAGE, IMAGE], "ip_adapter_scales": [0.5]}, "ip_adapter_scales has 1 entries for 2 ip_images"),
        ({"ip_images": [IMAGE], "ip_masks": [IMAGE, IMAGE]}, "ip_masks has 2 entries for 1 ip_images"),
        ({"ip_image": IMAGE, "ip_adapter_scales": [0.5]}, "ip_adapter_scales goes with ip_images"),
        ({"ip_image": IMAGE, "ip_masks": [IMAGE]}, "ip_masks goes with ip_images"),
        ({"ip_images": [IMAGE], "ip_adapter_scales": [2.5]}, "less than or equal to 2"),
        ({"ip_images": ["file:///etc/passwd"]}, "must be an http"),
        ({"ip_image": IMAGE, "ip_adapter_mode": "layout"}, "ip_adapter_mode"),
        ({"ip_image": IMAGE, "control_guidance_start": 0.6, "control_guidance_end": 0.4}, "must be less than"),
        ({"ip_image": IMAGE, "control_guidance_start": 0.5, "control_guidance_end": 0.5}, "must be less than"),
        ({"ip_image": IMAGE, "control_guidance_end": 1.5}, "less than or equal to 1"),
        ({"ip_image": IMAGE, "lora_weights": "ftp://e.com/a.safetensors"}, "must be an https URL"),
        ({"ip_image": IMAGE, "lora_weights": "https:///a.safetensors"}, "no host"),
        ({"ip_image": IMAGE, "lora_scale": 3}, "less than or equal to 2"),
    ],
)
def test_xl_inputs_refuse_what_cannot_work_and_say_why(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        xl(**fields)


def test_image_prompts_and_their_weights() -> None:
    assert (xl(ip_image=IMAGE).image_prompts, xl(ip_image=IMAGE).image_prompt_weights) == ([IMAGE], [0.6])
    several = xl(ip_images=[IMAGE, "https://e.com/b.png"], ip_adapter_scale=0.3)
    assert several.image_prompt_weights == [0.3, 0.3]
    assert xl(ip_images=[IMAGE, IMAGE], ip_adapter_scales=[0, 1.5]).image_prompt_weights == [0, 1.5]


# --- LoRA inputs at submission ---------------------------------------------------------------------


def safetensors_bytes(names: list[str]) -> bytes:
    from safetensors.torch import save
    from torch import zeros

    return save({name: zeros(2, 2) for name in names})


LORA_FILE = safetensors_bytes(["unet.a.lora_A.weight", "unet.a.lora_B.weight"])


def deeply_nested_header(depth: int) -> bytes:
    """A file whose header nests ``depth`` lists in a tensor's shape (a JSON parser recurses once per level)."""
    header = b'{"unet.a.lora_A.weight": {"dtype": "F32", "shape": ' + b"[" * depth + b"]" * depth
    header += b', "data_offsets": [0, 0]}}'
    return struct.pack("<Q", len(header)) + header


DEEP_FILE = deeply_nested_header(100_000)


def test_the_safetensors_header_is_read_from_the_first_bytes_only() -> None:
    chunks = [LORA_FILE[:5], LORA_FILE[5:30], LORA_FILE[30:]]
    header = read_safetensors_header(iter(chunks))
    assert set(header) - {"__metadata__"} == {"unet.a.lora_A.weight", "unet.a.lora_B.weight"}
    (length,) = struct.unpack("<Q", LORA_FILE[:8])
    consumed = iter([LORA_FILE[: 8 + length], b"never read"])
    read_safetensors_header(consumed)
    assert next(consumed) == b"never read"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pickle.dumps({"a": 1}), "not a safetensors file"),
        (b"PK\x03\x04" + b"\0" * 64, "not a safetensors file"),
        (b"\x05\0\0", "shorter than a safetensors header"),
        (struct.pack("<Q", 40) + b"{}", "ends inside its header"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 9) + b'{"a": 1}\x20', "does not describe tensors"),
        (DEEP_FILE, "its header nests deeper than 3 levels"),
        (deeply_nested_header(2), "its header nests deeper than 3 levels"),
    ],
)
def test_files_that_are_not_safetensors_are_refused_by_their_header(data: bytes, message: str) -> None:
    with pytest.raises(LoraInputError, match=message):
        read_safetensors_header([data])


def test_a_safetensors_file_must_hold_lora_layers() -> None:
    check_lora_header(read_safetensors_header([LORA_FILE]))
    with pytest.raises(LoraInputError, match="not a LoRA: 1 of its 2 tensors"):
        check_lora_header(read_safetensors_header([safetensors_bytes(["unet.a.lora_A.weight", "model.weight"])]))
    with pytest.raises(LoraInputError, match="holds no tensors"):
        check_lora_header({"__metadata__": {}})


OURS, THEIRS, BIG, NOT_LORA, DEEP = (f"{BASE_URL}/v1/files/{letter * 26}" for letter in "abcde")


def uploaded_files() -> UploadedFiles:
    return UploadedFiles(
        {
            "a" * 26: ("me", LORA_FILE, len(LORA_FILE)),
            "b" * 26: ("someone else", LORA_FILE, len(LORA_FILE)),
            "c" * 26: ("me", LORA_FILE, 2 * 2**30),
            "d" * 26: ("me", safetensors_bytes(["model.weight"]), 100),
            "e" * 26: ("me", DEEP_FILE, len(DEEP_FILE)),
        }
    )


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    def resolve_checked(url: str, *, allow_private: bool) -> None:
        if "internal" in url and not allow_private:
            raise URLRefused("host 'internal' resolves to a private address (10.0.0.1)")

    monkeypatch.setattr("api.intake.file_checks.resolve_checked", resolve_checked)
    return SimpleNamespace(settings=Settings(_env_file=None), files=uploaded_files())


def submit(services: SimpleNamespace, lora: str, headers: dict[str, Any] | None = None) -> None:
    check_file_inputs(XL, {"lora_weights": lora}, services, "me", BASE_URL, headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        (THEIRS, f"input.lora_weights: file {'b' * 26} does not exist or has expired"),
        (BIG, "is 2147483648 bytes, more than the 1073741824 allowed (KILN_LORA_MAX_BYTES)"),
        (NOT_LORA, "not a LoRA"),
        (DEEP, "not a safetensors file: its header nests deeper than 3 levels"),
        ("http://loras.example/a.safetensors", "must be an https URL"),
        ("https://internal/a.safetensors", "resolves to a private address"),
    ],
)
def test_submission_refuses_a_lora_that_cannot_work(services: SimpleNamespace, lora: str, message: str) -> None:
    with pytest.raises(ProblemError) as refused:
        submit(services, lora)
    assert refused.value.status == 422 and message in refused.value.detail
    assert refused.value.detail.startswith("input.lora_weights: ")


def test_submission_accepts_an_own_upload_or_a_public_https_url_and_reads_an_upload_once_per_batch(
    services: SimpleNamespace,
) -> None:
    submit(services, "https://loras.example/a.safetensors")
    headers: dict[str, Any] = {}
    for _ in range(3):
        submit(services, OURS, headers)
    assert len(services.files.opened) == 1
    services.settings = Settings(_env_file=None, image_fetch_allow_private=True)
    submit(services, "http://internal/a.safetensors")
