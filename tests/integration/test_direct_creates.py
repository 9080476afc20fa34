"""Plain single creates are served without FastAPI's request handling (``api.routes.direct_creates``), and
answer exactly as FastAPI's routes answer them; every other request to those paths is handed back to
FastAPI's routes: another content type, a body that does not parse or validate, a body read past its cap,
a request FastAPI's OpenTelemetry instruments, another method."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fastapi.routing
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.routes.direct_creates import FASTAPI_TELEMETRY, DirectCreate, DirectCreateRoute
from tests.support import assert_problem
from tests.support.predictions import app_for, depth2img_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
SD2 = "kiln/sd2-depth2img"
INPUT = depth2img_input(48, 48, num_inference_steps=2)
PLAIN = {"Content-Type": "application/json"}
# The same JSON, declared with a charset: not plain, so FastAPI's route answers it.
HANDED_BACK = {"Content-Type": "application/json; charset=utf-8"}
# Fields of a created prediction that differ between two creates of the same body.
PER_CREATE = {"id", "created_at", "urls", "queue_position"}

BY_VERSION = "/v1/predictions"
BY_MODEL = f"/v1/models/{SD2}/predictions"
# (path, body as sent): created, coerced, and refused for each reason FastAPI's route has.
CASES: dict[str, tuple[str, bytes]] = {
    "by-version": (BY_VERSION, json.dumps({"version": SD2, "input": INPUT}).encode()),
    "by-model": (BY_MODEL, json.dumps({"input": INPUT}).encode()),
    "extra-keys-ignored": (BY_MODEL, json.dumps({"input": INPUT, "stream": True, "x": 1}).encode()),
    "low-priority": (BY_MODEL, json.dumps({"input": INPUT, "priority": "low"}).encode()),
    "webhook": (BY_MODEL, json.dumps({"input": INPUT, "webhook": "https://example.com/hook"}).encode()),
    "unknown-version": (BY_VERSION, json.dumps({"version": "kiln/nope", "input": INPUT}).encode()),
    "unknown-model": ("/v1/models/kiln/nope/predictions", json.dumps({"input": INPUT}).encode()),
    "no-input": (BY_VERSION, json.dumps({"version": SD2}).encode()),
    "input-not-an-object": (BY_MODEL, json.dumps({"input": [1]}).encode()),
    "bad-input-value": (BY_MODEL, json.dumps({"input": {**INPUT, "seed": "x"}}).encode()),
    "bad-webhook": (BY_MODEL, json.dumps({"input": INPUT, "webhook": "not a url"}).encode()),
    "retention-as-text": (BY_MODEL, json.dumps({"input": INPUT, "retention_s": "5"}).encode()),
    "two-webhooks": (
        BY_MODEL,
        json.dumps(
            {"input": INPUT, "webhook": "https://a.example/h", "webhook_completed": "https://b.example/h"}
        ).encode(),
    ),
    "lone-surrogate": (BY_MODEL, b'{"input": {"prompt": "x\\ud800"}}'),
    "not-json": (BY_MODEL, b'{"input": '),
    "nan": (BY_MODEL, b'{"input": {"prompt": "x", "seed": NaN}}'),
    "a-list": (BY_MODEL, b"[]"),
    "nested-100000-deep": (BY_MODEL, b'{"input": {"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
    "invalid-utf8": (BY_MODEL, b'{"input": {"prompt": "\xff"}}'),
    "byte-order-mark": (BY_MODEL, b"\xef\xbb\xbf" + json.dumps({"input": INPUT}).encode()),
    "empty": (BY_MODEL, b""),
}

# The cases whose body parses and passes the route's body model (refused or not after that).
VALID_BODIES = {
    *("by-version", "by-model", "extra-keys-ignored", "low-priority", "webhook", "byte-order-mark"),
    *("unknown-version", "unknown-model", "bad-input-value", "nan"),
}


@pytest.fixture
def app(stack) -> Iterator[TestClient]:
    with app_for(stack) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN_A}"
        yield client


@pytest.fixture
def handed_back(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests the direct routes handed back to FastAPI's."""
    paths: list[str] = []
    hand_back = DirectCreate._hand_back

    async def counting(self: DirectCreate, scope: Scope, receive: Receive, send: Send) -> None:
        paths.append(scope["path"])
        await hand_back(self, scope, receive, send)

    monkeypatch.setattr(DirectCreate, "_hand_back", counting)
    return paths


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each request FastAPI's route handling solved the parameters of (``solve_dependencies``)."""
    calls: list[object] = []
    solve = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("dependant"))
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return calls


def _answer(response: Any) -> tuple[int, Any, set[str]]:
    """What a client sees of an answer, less what differs from one create to the next."""
    body = response.json()
    if response.status_code == 201:
        assert body.keys() >= PER_CREATE
        body = {key: value for key, value in body.items() if key not in PER_CREATE}
    headers = {name for name in response.headers if name not in {"content-length", "date"}}
    return response.status_code, body, headers


@pytest.mark.parametrize("token", ["valid", "unknown"])
@pytest.mark.parametrize("case", CASES)
def test_a_create_answers_alike_served_directly_or_by_fastapis_route(app, handed_back, case, token):
    path, body = CASES[case]
    # An unknown token's 401 comes before every problem of the body that FastAPI finds after reading it.
    auth = {"Authorization": "Bearer unknown-token"} if token == "unknown" else {}
    direct = app.post(path, content=body, headers=PLAIN | auth)
    served_directly = not handed_back
    fastapi_route = app.post(path, content=body, headers=HANDED_BACK | auth)
    assert handed_back[-1:] == [path], "the create declared with a charset was not handed back"
    assert _answer(direct) == _answer(fastapi_route)
    # Only a body that parses and that the body model accepts is served directly; the rest went to FastAPI's route.
    assert served_directly == (case in VALID_BODIES)


def test_a_plain_create_is_served_without_fastapis_request_handling(app, solved):
    created = app.post(BY_MODEL, json={"input": INPUT})
    assert created.status_code == 201, created.text
    assert solved == []
    assert created.headers["ratelimit-remaining"] and created.json()["status"] == "starting"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "Application/JSON", "application/vnd.x+json"]
)
def test_other_content_types_are_answered_by_fastapis_route(app, handed_back, content_type):
    body = json.dumps({"input": INPUT}).encode()
    answered = app.post(BY_MODEL, content=body, headers={"Content-Type": content_type})
    assert handed_back == [BY_MODEL]
    # FastAPI reads only a JSON content type as JSON (its subtype json or +json, any case).
    json_type = content_type.lower() in {"application/json", "application/vnd.x+json"}
    assert answered.status_code == (201 if json_type else 422), answered.text


def test_a_body_past_its_cap_met_while_read_directly_is_the_same_413(stack):
    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is met while the body is read
        yield json.dumps({"input": {**INPUT, "prompt": "x" * 4000}}).encode()

    with app_for(stack, max_request_bytes=1024) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN_A}"
        answers = [client.post(BY_MODEL, content=chunks(), headers=kind) for kind in (PLAIN, HANDED_BACK)]
    for refused in answers:
        assert_problem(refused, 413, "larger than 1024 bytes")
    assert _answer(answers[0]) == _answer(answers[1])


def test_a_request_fastapis_telemetry_instruments_goes_to_fastapis_route(stack, solved, handed_back):
    def instrumented(app: ASGIApp) -> ASGIApp:
        async def marked(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                scope[FASTAPI_TELEMETRY] = None  # as FastAPI's native OpenTelemetry marks what it instruments
            await app(scope, receive, send)

        return marked

    client = app_for(stack)
    with TestClient(instrumented(client.app)) as marked:
        created = marked.post(BY_MODEL, json={"input": INPUT}, headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert created.status_code == 201, created.text
    assert solved and not handed_back, "the instrumented create was served directly"


def test_other_methods_route_as_before(app):
    answered = app.get(BY_MODEL)
    refused = assert_problem(answered, 405)
    assert refused["status"] == 405 and answered.headers["allow"] == "POST"
    listed = app.get(BY_VERSION)
    assert listed.status_code == 200 and "results" in listed.json()


def test_each_direct_route_stands_before_a_fastapi_create_route_at_its_path(stack):
    with app_for(stack) as client:
        routes = client.app.router.routes  # type: ignore[attr-defined]
    direct = [route for route in routes if isinstance(route, DirectCreateRoute)]
    documented = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert [route.path for route in direct] == ["/v1/predictions", "/v1/models/{owner}/{name}/predictions"]
    for route, path in zip(direct, (BY_VERSION, BY_MODEL), strict=True):
        assert "post" in documented[route.path], f"no FastAPI create route at {route.path} to hand back to"
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
        first = next(found for found in routes if found.matches(dict(scope))[0] is Match.FULL)
        assert first is route, f"{first} answers a create before the direct route"
