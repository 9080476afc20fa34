"""Image intake at submission (``api.intake.image_staging``) and decoding (``shared.inputs.images``): every image
decoded fully, friendly base64, EXIF orientation, large inputs stored with a reference in the record."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from api.errors import ProblemError
from api.intake.image_staging import RequestImages, stage_images
from models.registry import find_model
from shared.inputs.images import ImageInputError, check_image, decode_data_uri, decode_image
from shared.predictions.record import Prediction
from shared.settings import Settings
from tests.support import data_uri, png_bytes, png_claiming_size
from tests.support.image_files import FakeFiles, FakeStorage, flat_png, rotated_jpeg
from worker.context import load_image_input

BASE_URL = "http://kiln.test"
SD2 = find_model("kiln/sd2-depth2img")


def test_base64_wrapped_in_lines_or_unpadded_is_accepted():
    data = png_bytes(8, 8)
    encoded = base64.b64encode(data).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"
    assert decode_data_uri(f"data:image/png;base64,{wrapped}", max_bytes=10_000) == data
    assert decode_data_uri(f"data:image/png;base64, {encoded[:40]}\r\n\t{encoded[40:]}", max_bytes=10_000) == data
    unpadded = base64.b64encode(data + b"x").decode().rstrip("=")
    assert unpadded != base64.b64encode(data + b"x").decode(), "the case has padding to drop"
    assert decode_data_uri(f"data:image/png;base64,{unpadded}", max_bytes=10_000) == data + b"x"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_bytes(64, 64)[:-200], id="truncated-png"),
        pytest.param(png_claiming_size(6000, 6000), id="header-claims-6000x6000"),
    ],
)
def test_a_truncated_or_corrupt_image_is_refused_by_full_decoding(data):
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        check_image(data, max_pixels=40_000_000)


def test_exif_orientation_is_applied():
    assert decode_image(rotated_jpeg(40, 20), max_pixels=10_000).size == (20, 40)
    checked = check_image(rotated_jpeg(40, 20), max_pixels=10_000)
    assert (checked.format, checked.width, checked.height, checked.flat) == ("JPEG", 20, 40, True)


def test_the_worker_receives_a_rotated_jpeg_upright():
    prediction = Prediction(tenant="a", model=SD2.ref, version="v", input={}, base_url=BASE_URL)
    files = SimpleNamespace(storage=None)
    image = load_image_input(data_uri(rotated_jpeg(40, 20), "image/jpeg"), prediction, files, Settings(_env_file=None))  # type: ignore[arg-type]
    assert image.size == (20, 40)


@pytest.fixture
def services() -> SimpleNamespace:
    settings = Settings(_env_file=None, inline_input_max_bytes=1024)
    return SimpleNamespace(settings=settings, files=FakeFiles(), storage=FakeStorage())


def test_a_flat_depth_image_is_refused_naming_the_field(services):
    inputs = {"input_image": data_uri(png_bytes(8, 8)), "depth_image": data_uri(flat_png())}
    with pytest.raises(ProblemError, match=r"input\.depth_image: a single flat shade") as refused:
        stage_images(SD2, inputs, services, "a", "p1", BASE_URL, RequestImages())
    assert refused.value.status == 422
    # The same flat image is a fine input_image.
    stage_images(SD2, {"input_image": data_uri(flat_png())}, services, "a", "p1", BASE_URL, RequestImages())


def test_a_large_data_uri_is_stored_and_the_record_keeps_a_reference(services):
    large = data_uri(png_bytes(64, 64, seed=3))
    small = data_uri(png_bytes(4, 4))
    assert len(large) > 1024 >= len(small)
    stored, files = stage_images(
        SD2, {"input_image": large, "depth_image": small}, services, "a", "p1", BASE_URL, RequestImages()
    )
    reference = f"{BASE_URL}/v1/predictions/p1/inputs/input_image"
    assert stored == {"input_image": reference, "depth_image": small}
    assert files == {}, "the reference names its object"
    assert services.storage.objects["predictions/p1/inputs/input_image"] == png_bytes(64, 64, seed=3)


def test_an_image_repeated_across_a_request_is_uploaded_once_and_copied(services):
    large = data_uri(png_bytes(64, 64, seed=4))
    images = RequestImages()
    for prediction_id in ("p1", "p2", "p3"):
        stage_images(SD2, {"input_image": large}, services, "a", prediction_id, BASE_URL, images)
    assert sorted(services.storage.objects) == [f"predictions/p{i}/inputs/input_image" for i in (1, 2, 3)]
    assert services.storage.copies == [
        ("predictions/p1/inputs/input_image", f"predictions/p{i}/inputs/input_image") for i in (2, 3)
    ]
