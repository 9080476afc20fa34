"""Which single creates are validated on the event loop (``api.intake.loop_fit``): only those that do no
I/O and little CPU; anything that fetches, reads S3, resolves a name, claims a key in Redis or decodes a
large image goes to its token's intake lane."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from api.errors import ProblemError
from api.intake.loop_fit import ON_LOOP_MAX_PIXELS, loop_checked_images
from api.intake.submission import validate_and_claim
from api.schemas import PredictionFields
from models.registry import find_model
from shared.settings import Settings
from tests.support import data_uri

SETTINGS = Settings(_env_file=None, api_token="a")
SPEC = find_model("kiln/ip-adapter-depth-xl")


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


SMALL = png(64, 64)


def fits(body: dict[str, Any], idempotency_key: str | None = None, priority: str = "normal") -> bool:
    checked = loop_checked_images(SPEC, PredictionFields.model_validate(body), idempotency_key, priority, SETTINGS)
    return checked is not None


def test_a_create_with_small_data_uri_images_is_validated_on_the_loop_each_image_checked_once() -> None:
    body = PredictionFields.model_validate({"input": {"prompt": "a", "input_image": SMALL, "ip_image": SMALL}})
    images = loop_checked_images(SPEC, body, None, "normal", SETTINGS)
    assert images is not None and images.checked == {SMALL} and list(images.seen) == [SMALL]
    checked = images.seen[SMALL].checked
    assert (checked.format, checked.width, checked.height, checked.flat) == ("PNG", 64, 64, True)


def test_staging_does_not_decode_again_what_the_loop_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    body = PredictionFields.model_validate({"input": {"prompt": "a", "input_image": SMALL, "ip_image": SMALL}})
    images = loop_checked_images(SPEC, body, None, "normal", SETTINGS)

    def decoded_again(*_: Any) -> None:
        raise AssertionError("an image checked on the loop was decoded again")

    monkeypatch.setattr("api.intake.image_staging.check_image", decoded_again)
    monkeypatch.setattr("api.intake.image_staging.decode_data_uri", decoded_again)
    services = SimpleNamespace(settings=SETTINGS, storage=NoStorage())
    done = validate_and_claim(services, "t", SPEC, body, "http://kiln", loop_checked=images)  # type: ignore[arg-type]
    assert done.created and done.prediction.input["input_image"] == SMALL


@pytest.mark.parametrize(
    ("body", "idempotency_key", "priority"),
    [
        ({"input": {"prompt": "a", "input_image": "https://example.com/a.png"}}, None, "normal"),
        ({"input": {"prompt": "a", "input_image": SMALL, "nested": ["http://10.0.0.1/x"]}}, None, "normal"),
        ({"input": {"prompt": "a", "input_image": SMALL}}, "key-1", "normal"),
        ({"input": {"prompt": "a", "input_image": SMALL}}, None, "low"),
        ({"input": {"prompt": "a", "input_image": SMALL}, "priority": "low"}, None, "normal"),
        ({"input": {"prompt": "a", "input_image": SMALL}, "webhook": "https://example.com/hook"}, None, "normal"),
        ({"input": {"prompt": "a", "input_image": SMALL}, "webhook_completed": "https://e.com/h"}, None, "normal"),
    ],
    ids=["image-url", "nested-url", "idempotency-key", "low-header", "low-body", "webhook", "webhook-completed"],
)
def test_a_create_that_may_wait_on_io_goes_to_its_intake_lane(
    body: dict[str, Any], idempotency_key: str | None, priority: str
) -> None:
    assert not fits(body, idempotency_key, priority)


def test_an_image_over_the_pixel_bound_goes_to_its_intake_lane_though_its_data_uri_is_small() -> None:
    """A flat image compresses to almost nothing: its header, not its size, says what decoding costs."""
    large = png(1024, 1024)
    assert ON_LOOP_MAX_PIXELS < 1024 * 1024 and len(large) < SETTINGS.inline_input_max_bytes
    assert not fits({"input": {"prompt": "a", "input_image": large}})


def test_a_data_uri_stored_in_s3_unreadable_or_corrupt_goes_to_its_intake_lane() -> None:
    """Its intake thread answers why (the same 422 either way: ``test_intake_lanes``)."""
    over_inline = "data:image/png;base64," + "A" * SETTINGS.inline_input_max_bytes
    assert not fits({"input": {"prompt": "a", "input_image": over_inline}})
    assert not fits({"input": {"prompt": "a", "input_image": "data:image/png;base64,bm90IGFuIGltYWdl"}})
    whole = base64.b64decode(SMALL.partition(",")[2])
    truncated = data_uri(whole[:60])  # its header, the start of its pixels
    assert not fits({"input": {"prompt": "a", "input_image": truncated, "ip_image": SMALL}})


class NoStorage:
    """S3 that notes every call (a failing delete is only logged): a create validated on the loop stores
    and deletes nothing there."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"storage.{name} called on the event loop")


def test_a_create_refused_on_the_loop_is_a_422_with_no_s3_call() -> None:
    """Its images check, its input does not: the same 422 as on the intake thread, and no S3 delete of
    what was never staged."""
    body = PredictionFields.model_validate(
        {"input": {"prompt": "a", "input_image": SMALL, "ip_image": SMALL, "num_inference_steps": 0}}
    )
    checked = loop_checked_images(SPEC, body, None, "normal", SETTINGS)
    assert checked is not None
    storage = NoStorage()
    services = SimpleNamespace(settings=SETTINGS, storage=storage)
    with pytest.raises(ProblemError) as refused:
        validate_and_claim(services, "t", SPEC, body, "http://kiln", loop_checked=checked)  # type: ignore[arg-type]
    assert refused.value.status == 422 and refused.value.detail.startswith("input.num_inference_steps")
    assert storage.calls == []
