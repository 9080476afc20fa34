"""A short property-based fuzz of ``POST /v1/predictions``: whatever the body, never a 5xx, and
every 4xx is a problem+json document.

It runs an in-process app on the stack's Redis server but another database, so the predictions it
manages to create are stored and enqueued there and never consumed by the stack's worker.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis import Redis

from tests.support import PROBLEM_JSON, data_uri, png_bytes, png_claiming_size
from tests.support.predictions import app_for, depth2img_input

pytestmark = pytest.mark.integration
FUZZ_DB = 5
FUZZ_TOKEN = "fuzz-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {FUZZ_TOKEN}"}
VERSION = "kiln/sd2-depth2img"
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

VALID_BODY = {"version": VERSION, "input": depth2img_input(width=64, height=64)}
INPUT_FIELDS = [
    "prompt",
    "negative_prompt",
    "input_image",
    "prompt_strength",
    "num_outputs",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "depth_image",
]
TOP_FIELDS = ["version", "input", "webhook", "webhook_events_filter", "stream"]

scalars = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
edge_numbers = st.sampled_from(
    [
        0,
        -1,
        1,
        8,
        9,
        500,
        501,
        20,
        20.000001,
        0.999999,
        2**31,
        2**32,
        2**63,
        2**64,
        10**30,
        -(10**30),
        1e308,
        -0.0,
        5e-324,
        float("nan"),
        float("inf"),
        float("-inf"),
    ]
)
edge_strings = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a" * 10_000,
        "DDIM",
        "K_EULER",
        "ddim",
        VERSION,
        "kiln/nope",
        f"{VERSION}:",
        ":",
        "/",
        "data:",
        "data:,",
        "data:image/png;base64,",
        "data:image/png;base64,====",
        "http://",
        "http:///x.png",
        "http://[::1]/x.png",
        "http://10.0.0.1/x.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "%00",
        "\ud7ff",
        "🔥" * 50,
        "\u202e\u0000\uffff",
    ]
)
image_values = st.one_of(
    st.binary(max_size=64).map(data_uri),
    st.integers(1, 200).map(lambda n: data_uri(png_bytes(64, 64)[:n])),
    st.sampled_from(
        [
            data_uri(png_claiming_size(100_000, 100_000)),
            data_uri(png_bytes(64, 64), "image/jpeg"),
            data_uri(png_bytes(64, 64), "text/html"),
        ]
    ),
)
values = json_values | edge_numbers | edge_strings | image_values


@st.composite
def mutated_bodies(draw) -> object:
    """A valid body after a few edits: fields set to odd values, removed, added, or buried in junk."""
    body = json.loads(json.dumps(VALID_BODY))
    for _ in range(draw(st.integers(1, 4))):
        where = body.get("input") if isinstance(body.get("input"), dict) and draw(st.booleans()) else body
        field = draw(st.sampled_from(INPUT_FIELDS if where is not body else TOP_FIELDS) | st.text(max_size=8))
        if draw(st.integers(0, 3)) == 0:
            where.pop(field, None)
        else:
            where[field] = draw(values)
    wrapper = draw(st.sampled_from(["none", "none", "none", "list", "nested", "input-list"]))
    wrapped = {"list": [body], "nested": {"body": body}, "input-list": body | {"input": [body.get("input")]}}
    return wrapped.get(wrapper, body)


def assert_not_a_server_error(response) -> None:
    event(f"HTTP {response.status_code}")  # shown by pytest --hypothesis-show-statistics
    assert response.status_code < 500, response.text[:1000]
    if response.status_code >= 400:
        assert response.headers["content-type"] == PROBLEM_JSON, (response.status_code, response.text[:500])
        problem = response.json()
        assert problem["status"] == response.status_code and problem["title"] and isinstance(problem["detail"], str)
    else:
        assert response.status_code == 201, response.text[:500]
        assert response.json()["status"] == "starting"


def post_json(app: TestClient, body: object):
    """Serialize with NaN and Infinity allowed (Python's JSON parser, and so the API's, accepts them)."""
    return app.post(
        "/v1/predictions",
        content=json.dumps(body, allow_nan=True).encode(),
        headers=AUTH | {"content-type": "application/json"},
    )


@pytest.fixture(scope="module")
def fuzz_app(stack) -> Iterator[TestClient]:
    base, _, _ = stack.redis_url.rpartition("/")
    redis_url = f"{base}/{FUZZ_DB}"
    try:
        with app_for(
            stack, redis_url=redis_url, api_token=FUZZ_TOKEN, rate_limit_burst=100_000, image_fetch_timeout_s=1
        ) as app:
            yield app
    finally:
        with Redis.from_url(redis_url) as fuzz_redis:
            fuzz_redis.flushdb()


@FUZZ
@given(body=mutated_bodies())
def test_mutations_of_a_valid_body(fuzz_app, body):
    assert_not_a_server_error(post_json(fuzz_app, body))


@FUZZ
@given(body=json_values | st.dictionaries(st.sampled_from(TOP_FIELDS) | st.text(max_size=8), values, max_size=5))
def test_arbitrary_json(fuzz_app, body):
    assert_not_a_server_error(post_json(fuzz_app, body))


@FUZZ
@given(data=st.data())
def test_arbitrary_and_corrupted_bytes(fuzz_app, data):
    valid = json.dumps(VALID_BODY).encode()
    position = data.draw(st.integers(0, len(valid)))
    body = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.just(valid[:position]),
            st.binary(min_size=1, max_size=4).map(lambda junk: valid[:position] + junk + valid[position:]),
        )
    )
    content_type = data.draw(st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1"]))
    response = fuzz_app.post("/v1/predictions", content=body, headers=AUTH | {"content-type": content_type})
    assert_not_a_server_error(response)
