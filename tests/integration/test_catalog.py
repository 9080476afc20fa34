"""Replicate's account and catalog calls through the official Python client, list filters, files
paging, ``ratelimit-*`` headers on every answer, trainings and the legacy ``webhook_completed``."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import replicate

from tests.support import assert_problem, wait_until
from tests.support.predictions import create, depth2img_input
from tests.support.receiver import WebhookReceiver
from tests.support.stack import PAGE_SIZE, TOKEN_A

pytestmark = pytest.mark.integration


@pytest.fixture
def rc(stack) -> replicate.Client:
    return replicate.Client(api_token=TOKEN_A, base_url=stack.base_url)


def test_account_hardware_collections_and_search_through_the_client(rc):
    account = rc.accounts.current()
    assert account.type == "user" and account.username and account.name == account.username
    assert [(h.sku, h.name) for h in rc.hardware.list()] == [("gpu", "GPU")]
    collections = rc.collections.list()
    assert [c.slug for c in collections.results] == ["kiln"]
    kiln = rc.collections.get("kiln")
    assert {f"{m.owner}/{m.name}" for m in kiln.models} >= {"kiln/sd2-depth2img", "kiln/ip-adapter-openpose-xl"}
    found = rc.models.search("openpose")
    assert [f"{m.owner}/{m.name}" for m in found.results] == ["kiln/ip-adapter-openpose-xl"]
    assert rc.models.search("no-such-model-anywhere").results == []


def test_get_search_and_an_unknown_collection(client):
    body = client.get("/v1/search", params={"query": "depth"}).json()
    names = [entry["model"]["name"] for entry in body["models"]]
    assert "sd2-depth2img" in names and "ip-adapter-openpose-xl" not in names
    assert all(0 < entry["metadata"]["score"] <= 1 for entry in body["models"])
    assert_problem(client.get("/v1/search"), 422, "query")
    assert_problem(client.get("/v1/collections/other"), 404, "kiln")


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/trainings"), ("GET", "/v1/trainings/abc")])
def test_trainings_answer_that_kiln_does_not_train(client, method, path):
    assert_problem(client.request(method, path, json={}), 404, "does not train")


def test_created_filters_and_source(client):
    older = [create(client) for _ in range(PAGE_SIZE + 1)]
    second = create(client)
    middle = datetime.fromisoformat(second["created_at"]) - timedelta(microseconds=1)
    listed = client.get("/v1/predictions", params={"created_after": middle.isoformat()}).json()
    assert [p["id"] for p in listed["results"]] == [second["id"]] and listed["next"] is None
    before = client.get("/v1/predictions", params={"created_before": second["created_at"]}).json()
    assert [p["id"] for p in before["results"]] == [p["id"] for p in older[::-1][:PAGE_SIZE]]
    # Following next keeps the filters.
    assert "created_before=" in before["next"]
    assert second["id"] not in [p["id"] for p in client.get(before["next"]).json()["results"]]
    assert client.get("/v1/predictions", params={"source": "web"}).json()["results"] == []
    # The Python client lists from any list URL, filters included.
    rc = replicate.Client(api_token=TOKEN_A, base_url=str(client.base_url))
    assert [
        p.id for p in rc.predictions.list(f"/v1/predictions?created_after={quote(middle.isoformat())}").results
    ] == [second["id"]]
    assert all(p["source"] == "api" for p in client.get("/v1/predictions", params={"source": "api"}).json()["results"])
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert client.get("/v1/predictions", params={"created_after": future}).json()["results"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-13-01"}, "created_before"),
        ({"source": "cli"}, "source"),
        ({"cursor": "%%%"}, "cursor"),
    ],
)
def test_bad_filters_are_400s_naming_the_parameter(client, params, field):
    assert_problem(client.get("/v1/predictions", params=params), 400, field)


def test_files_page_like_predictions(client, rc):
    uploaded = {
        rc.files.create(io.BytesIO(f"file {i}".encode()), filename=f"f{i}.txt").id for i in range(PAGE_SIZE + 1)
    }
    seen, url, pages = [], "/v1/files", 0
    while url:
        page = client.get(url).json()
        assert len(page["results"]) <= PAGE_SIZE
        seen += [f["id"] for f in page["results"]]
        url, pages = page["next"], pages + 1
    assert uploaded <= set(seen) and len(seen) == len(set(seen)) and pages >= 2
    second = client.get(client.get("/v1/files").json()["next"]).json()
    assert client.get(second["previous"]).json()["results"][0]["id"] == seen[0]


def test_ratelimit_headers_on_every_answer(client):
    created = client.post("/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": depth2img_input()})
    refused = client.post("/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": {}})
    missing = client.get("/v1/predictions/nope")
    for response in (created, refused, missing, client.get("/v1/account")):
        assert {"ratelimit-remaining", "ratelimit-reset"} <= set(response.headers), response.status_code
    assert (created.status_code, refused.status_code, missing.status_code) == (201, 422, 404)


def test_webhook_completed_gets_only_the_completed_event(client):
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver:
        body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(), "webhook_completed": receiver.url("/c")}
        created = client.post("/v1/predictions", json=body)
        assert created.status_code == 201, created.text
        wait_until(lambda: receiver.at("/c"), 120, what="the completed webhook")
        assert [r.status for r in receiver.at("/c")] == ["succeeded"]
        assert receiver.bad_signatures == 0
        both = body | {"webhook": receiver.url("/other")}
        assert_problem(client.post("/v1/predictions", json=both), 422, "webhook_completed")
