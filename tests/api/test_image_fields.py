"""Image inputs at any depth: found in the schema, then staged, ownership-checked and reported by where they are."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from api.errors import ProblemError
from api.intake.image_staging import RequestImages, stage_images
from api.intake.inputs import check_input
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sdxl_family.schema import IPAdapterXLInput
from shared.inputs.schema import (
    EVERY_ITEM,
    EVERY_VALUE,
    ImageField,
    ImageURI,
    ModelInput,
    _image_finder,
    _images_in,
    image_fields,
    image_inputs,
)
from shared.settings import Settings
from tests.support import data_uri, png_bytes
from tests.support.image_files import BASE_URL, OURS, FakeFiles, FakeStorage
from tests.support.nested_images import LIST_OF_IMAGES, ListOfImagesInput, NestedImagesInput

GONE = f"{BASE_URL}/v1/files/{'b' * 26}"
PNG = data_uri(png_bytes(8, 8))


def test_the_models_image_fields_are_their_image_inputs():
    assert image_fields(Depth2ImgInput) == (ImageField(("input_image",), True), ImageField(("depth_image",), False))
    # One image prompt or several (ip_image or ip_images): neither is required on its own.
    assert image_fields(IPAdapterXLInput) == (
        ImageField(("input_image",), False),
        ImageField(("ip_image",), False),
        ImageField(("ip_images", EVERY_ITEM), False),
        ImageField(("ip_masks", EVERY_ITEM), False),
        ImageField(("control_image",), False),
    )


def test_image_fields_are_found_in_lists_nested_objects_optionals_and_mappings():
    assert image_fields(ListOfImagesInput) == (
        ImageField(("input_image",), False),
        ImageField(("references", EVERY_ITEM), True),
        ImageField(("masks", EVERY_ITEM), False),
        ImageField(("style", "image"), False),
        ImageField(("layers", EVERY_ITEM, "image"), False),
        ImageField(("named", EVERY_VALUE), False),
    )
    assert image_fields(NestedImagesInput) == (
        ImageField(("style", "image"), True),
        ImageField(("layers", EVERY_ITEM, "image"), True),
        ImageField(("extra", "image"), False),
    )


def test_image_inputs_names_where_each_image_is():
    inputs = ListOfImagesInput.model_validate(
        {
            "references": ["https://e.com/0.png", "https://e.com/1.png"],
            "masks": None,
            "style": {"image": "https://e.com/style.png"},
            "layers": [{"image": PNG}, {"image": "https://e.com/l1.png"}],
            "named": {"sky": "https://e.com/sky.png"},
            "caption": "https://e.com/not-an-image-field",
        }
    ).model_dump(mode="json")
    assert image_inputs(ListOfImagesInput, inputs) == [
        ("references.0", "https://e.com/0.png"),
        ("references.1", "https://e.com/1.png"),
        ("style.image", "https://e.com/style.png"),
        ("layers.0.image", PNG),
        ("layers.1.image", "https://e.com/l1.png"),
        ("named.sky", "https://e.com/sky.png"),
    ]


@pytest.fixture
def services() -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(_env_file=None), files=FakeFiles(), storage=FakeStorage())


def test_a_missing_or_foreign_file_inside_a_list_is_refused_naming_the_item(services):
    check_input(LIST_OF_IMAGES, {"references": [OURS]}, services, "a", BASE_URL)
    with pytest.raises(ProblemError) as refused:
        check_input(LIST_OF_IMAGES, {"references": [OURS, GONE]}, services, "a", BASE_URL)
    assert refused.value.status == 422
    assert refused.value.detail == f"input.references.1: file {'b' * 26} does not exist or has expired"
    with pytest.raises(ProblemError, match=r"input\.layers\.0\.image: file a{26} does not exist"):
        check_input(LIST_OF_IMAGES, {"references": [], "layers": [{"image": OURS}]}, services, "b", BASE_URL)


def test_a_bad_data_uri_inside_a_list_is_refused_naming_the_item(services):
    with pytest.raises(ProblemError, match=r"input\.references\.1: .*not a readable image"):
        check_input(LIST_OF_IMAGES, {"references": [PNG, data_uri(b"not an image")]}, services, "a", BASE_URL)


def test_every_remote_image_in_a_list_or_nested_object_is_fetched_once_and_staged(services, monkeypatch):
    fetched: list[str] = []

    def fetch_url(url: str, **bounds) -> bytes:
        fetched.append(url)
        return png_bytes(8, 8, seed=len(fetched))

    monkeypatch.setattr("api.intake.image_staging.fetch_url", fetch_url)
    inputs = check_input(
        LIST_OF_IMAGES,
        {
            "references": ["https://e.com/0.png", PNG, OURS, "https://e.com/0.png"],
            "layers": [{"image": "https://e.com/layer.png"}],
            "caption": "https://e.com/caption",
        },
        services,
        "a",
        BASE_URL,
    ).stored

    stored, staged = stage_images(LIST_OF_IMAGES, inputs, services, "a", "p1", BASE_URL, RequestImages())

    assert fetched == ["https://e.com/0.png", "https://e.com/layer.png"]
    assert staged == {
        "https://e.com/0.png": "predictions/p1/inputs/references.0",
        OURS: "predictions/p1/inputs/references.2",
        "https://e.com/layer.png": "predictions/p1/inputs/layers.0.image",
    }
    assert stored == inputs, "small data URIs and URLs stay as given"
    assert sorted(services.storage.objects) == sorted(staged.values())
    assert services.storage.copies == [(f"files/{'a' * 26}", "predictions/p1/inputs/references.2")]


def test_a_remote_image_in_a_list_that_is_not_an_image_is_refused_naming_the_item(services, monkeypatch):
    monkeypatch.setattr(
        "api.intake.image_staging.fetch_url",
        lambda url, **bounds: png_bytes(8, 8) if url.endswith(".png") else b"<html>",
    )
    inputs = {"references": ["https://e.com/0.png", "https://e.com/page.html"]}
    with pytest.raises(ProblemError, match=r"input\.references\.1: "):
        stage_images(LIST_OF_IMAGES, inputs, services, "a", "p1", BASE_URL, RequestImages())


class _Node(BaseModel):
    image: ImageURI | None = None
    children: list[_Node] = []


class _SelfNestedInput(ModelInput):
    root: _Node


def _walked(input_model: type[ModelInput], inputs: dict[str, Any]) -> list[tuple[str, str]]:
    schema = input_model.model_json_schema()
    return list(dict(_images_in(inputs, schema, schema.get("$defs", {}), ())).items())


@pytest.mark.parametrize(
    ("input_model", "inputs"),
    [
        (
            IPAdapterXLInput,
            {
                "prompt": "https://e.com/not-an-image-field",
                "ip_images": ["https://e.com/0.png", PNG, ""],
                "input_image": "https://e.com/in.png",
                "ip_masks": None,
                "control_image": PNG,
            },
        ),
        (IPAdapterXLInput, {"prompt": "a fox"}),
        (
            NestedImagesInput,
            {
                "layers": [{"image": PNG}, {"image": "https://e.com/l1.png", "weight": 2}],
                "style": {"image": "https://e.com/style.png"},
                "extra": None,
            },
        ),
    ],
)
def test_the_compiled_image_finder_finds_what_the_schema_walk_finds_in_the_same_order(input_model, inputs):
    assert _image_finder(input_model) is not None
    assert image_inputs(input_model, inputs) == _walked(input_model, inputs)


def test_models_the_image_fields_do_not_describe_fully_keep_the_schema_walk():
    assert _image_finder(ListOfImagesInput) is None  # a mapping of images
    assert _image_finder(_SelfNestedInput) is None  # nested in itself: deeper than its fields go
    deep = {"root": {"children": [{"children": [{"children": [{"image": PNG}]}]}]}}
    assert image_inputs(_SelfNestedInput, deep) == [("root.children.0.children.0.children.0.image", PNG)]
