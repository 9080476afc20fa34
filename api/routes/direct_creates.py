"""Plain single creates, served without FastAPI's request handling; every other request to the same paths
is handed back to FastAPI's routes, which answer it as they always did.

FastAPI's handling of a single create (the included router's layers, the dependency solving, the generic
body reading and the endpoint's wrappers) was ~16 % of the API process's instructions for one
(``tools.count_create``: 2.617 M with it, 2.195 M without). ``DirectCreate`` routes ``POST /v1/predictions``
and ``POST /v1/models/{owner}/{name}/predictions`` ahead of FastAPI's routes. A *plain* request is
served there:

- its ``Content-Type`` is exactly ``application/json``;
- its body parses with ``json.loads``, as FastAPI (Starlette's ``Request.json``) parses it (not orjson,
  which reads an integer past 64 bits as a float, and refuses what the stdlib reads as infinity);
- and the route's own body model (``CreatePrediction``, ``PredictionFields``) accepts it.

Nothing is done before those checks, which have no effect of their own. A plain request then meets what the
FastAPI route does, in the same order: ``create_request`` (the token, its rate limit, the create headers),
then ``create_by_version`` or ``create_by_model``. Every other request is handed back to routing, with its
body replayed (or the error that reading it raised, raised again), and goes to the FastAPI route: another
content type, a body that does not parse, a body the model refuses (its 422, and a refused token's 401 or
429 before it), and any request FastAPI's OpenTelemetry instruments (its spans stay whole). The FastAPI
routes stay the documented ones (OpenAPI).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import CreateRequest, create_request, refuse_if_spent
from api.intake.body_limit import too_deep_json
from api.schemas import CreatePrediction, PredictionFields
from api.single_creates import BY_MODEL_PATH, BY_VERSION_PATH, create_by_model, create_by_version

# Marks a request handed back to routing, which ``DirectCreateRoute`` then leaves to FastAPI's route.
HANDED_BACK = "kiln.handed_back"
# Set by FastAPI when its OpenTelemetry instruments the request.
FASTAPI_TELEMETRY = "fastapi.telemetry"
JSON = "application/json"

Create = Callable[[CreateRequest, dict[str, Any], Any], Awaitable[Response]]


class DirectCreate:
    """The ASGI app of one create route: a plain request served (see the module), any other handed back to
    ``router``, body replayed."""

    def __init__(self, router: ASGIApp, body_model: type[BaseModel], create: Create) -> None:
        self.router = router
        self.body_model = body_model
        self.create = create

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        refuse_if_spent(request)  # before the body is read: a spent token's create would only be refused
        if request.headers.get("content-type") != JSON:
            await self._hand_back(scope, receive, send)
            return
        try:
            raw = await request.body()
        except Exception as exc:  # a body past its cap, a client gone: FastAPI's route answers it
            await self._hand_back(scope, _again(exc, receive), send)
            return
        body = None if too_deep_json(JSON, raw) else self._plain_body(raw)
        if body is None:
            await self._hand_back(scope, _again(raw, receive), send)
            return
        response = await self.create(await create_request(request), request.path_params, body)
        await response(scope, receive, send)

    def _plain_body(self, raw: bytes) -> BaseModel | None:
        """The body as the route's model validates it; None when it does not parse or validate (or its
        validation raises anything else: FastAPI's route answers it, after the token's check)."""
        try:
            return self.body_model.model_validate(json.loads(raw))
        except Exception:
            return None

    async def _hand_back(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[HANDED_BACK] = True
        await self.router(scope, receive, send)


class DirectCreateRoute(Route):
    """Matches only a POST that is not handed back and that FastAPI's OpenTelemetry does not instrument:
    every other request at its path routes exactly as if it were not there."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "POST" or HANDED_BACK in scope or FASTAPI_TELEMETRY in scope:
            return Match.NONE, {}
        return super().matches(scope)


def _again(read: bytes | Exception, receive: Receive) -> Receive:
    """``receive`` whose first call gives again what reading the body gave: the whole body, or the error
    raised (a body past its cap, a client gone)."""
    pending = True

    async def first_again() -> Message:
        nonlocal pending
        if not pending:
            return await receive()
        pending = False
        if isinstance(read, Exception):
            raise read
        return {"type": "http.request", "body": read, "more_body": False}

    return first_again


async def _by_version(create: CreateRequest, _: dict[str, Any], body: CreatePrediction) -> Response:
    return await create_by_version(create, body)


async def _by_model(create: CreateRequest, params: dict[str, Any], body: PredictionFields) -> Response:
    return await create_by_model(create, params["owner"], params["name"], body)


def direct_create_routes(router: ASGIApp) -> list[Route]:
    """The two routes, to be matched before FastAPI's; ``router`` (the app's) routes what they hand back."""
    return [
        DirectCreateRoute(
            BY_VERSION_PATH,
            DirectCreate(router, CreatePrediction, _by_version),
            methods=["POST"],
            include_in_schema=False,
        ),
        DirectCreateRoute(
            BY_MODEL_PATH,
            DirectCreate(router, PredictionFields, _by_model),
            methods=["POST"],
            include_in_schema=False,
        ),
    ]
