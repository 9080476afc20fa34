"""List parameters a hostile client sends: dates at the ends of the calendar with ±14:00 offsets and
cursors of any shape (offsets of 10²³ included) are a page or a 400 naming the parameter, never a 5xx."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import PROBLEM_JSON, assert_problem, data_uri, png_bytes
from tests.support.predictions import app_for
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN_A}"}
ITEM = {
    "version": "kiln/sd2-depth2img",
    "input": {"prompt": "pages", "input_image": data_uri(png_bytes(64, 64)), "num_inference_steps": 1},
}


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def batch_id(stack) -> str:
    with stack.client(TOKEN_A) as client:
        created = client.post("/v1/batches", json={"predictions": [ITEM]})
    assert created.status_code == 201, created.text
    return created.json()["id"]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"created_after": "0001-01-01T00:00:00+14:00"}, "created_after"),
        ({"created_before": "9999-12-31T23:59:59-14:00"}, "created_before"),
        ({"created_after": "0001-01-01T00:00:00Z", "created_before": "9999-12-31T23:59:59-14:00"}, "created_before"),
    ],
)
def test_dates_outside_the_calendar_in_utc_are_a_400_naming_the_parameter(client, query, name):
    assert_problem(client.get("/v1/predictions", params=query), 400, name)


def test_dates_at_the_ends_of_the_calendar_list_pages(client):
    query = {"created_after": "0001-01-01T00:00:00Z", "created_before": "9999-12-31T23:59:59+14:00"}
    page = client.get("/v1/predictions", params=query)
    assert page.status_code == 200, page.text
    back = client.get("/v1/predictions", params={"created_after": "0001-01-01T00:00:00-14:00"})
    assert back.status_code == 200, back.text


def test_a_batch_page_cursor_past_any_batch_is_a_400_naming_the_cursor(client, batch_id):
    cursor = cursor_of(f"offset:{10**23}")
    assert_problem(client.get(f"/v1/batches/{batch_id}/predictions", params={"cursor": cursor}), 400, "cursor")
    first = client.get(f"/v1/batches/{batch_id}/predictions")
    assert first.status_code == 200 and first.json()["next"] is None


@pytest.fixture(scope="module")
def app(stack) -> Iterator[TestClient]:
    with app_for(stack, rate_limit_per_s=100_000, rate_limit_burst=100_000) as app:
        yield app


def assert_page_or_cursor_problem(response: httpx.Response) -> None:
    assert response.status_code in {200, 400}, response.text[:500]
    if response.status_code == 400:
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["detail"].startswith("cursor")
    else:
        assert set(response.json()) == {"next", "previous", "results"}


cursors = st.text(max_size=300) | st.builds(
    "{}:{}".format,
    st.sampled_from(["before", "after", "offset", ""]),
    st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str),
).map(cursor_of)


@given(cursor=cursors)
@example(cursor=cursor_of(f"offset:{10**23}"))
@example(cursor=cursor_of("before:" + "z" * 64))
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_any_cursor_on_any_list_is_a_page_or_a_400(app, batch_id, cursor):
    for path in ("/v1/predictions", "/v1/files", "/v1/batches", f"/v1/batches/{batch_id}/predictions"):
        assert_page_or_cursor_problem(app.get(path, params={"cursor": cursor}, headers=AUTH))
