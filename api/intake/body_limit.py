"""Request body caps: size, answered as problem+json 413s, and JSON nesting, as 422s.

FastAPI's own ``max_body_size`` answers in plain text; this middleware keeps the error format the
same as everywhere else, and gives uploads their own, larger cap.

A JSON body that Python's parser refuses for anything but its syntax (not UTF-8, an integer past 4,300
digits), which FastAPI answers with a 400 naming nothing, is a 422 saying why (``BoundedJSONRoute``).

A JSON body nested past ``MAX_DEPTH`` is refused before it is parsed (``BoundedJSONRoute``, and the
direct creates' ``api.routes.direct_creates``): Python's parser and every later walk of the value (text
checks, a batch's items pickled for the intake pool) recurse, and share one stack, so a body that parsed
could still end in a 500, at depths that differed by the path it took.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ProblemError, problem_response
from shared.inputs.json_nesting import nests_deeper_than, too_deep_problem


class BodyTooLarge(HTTPException):
    """Raised while reading a body past its cap. An HTTPException, so FastAPI's body parsing lets
    it through and the problem+json handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, default_limit: int, limits_by_prefix: dict[str, int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits_by_prefix = limits_by_prefix

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits_by_prefix.items():
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await problem_response(413, BodyTooLarge(limit).detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


# The methods whose body a route reads.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def too_deep_json(content_type: str | None, body: bytes) -> bool:
    """Whether ``body``, read as JSON (its content type says JSON, or none is given, as FastAPI reads it),
    nests deeper than ``MAX_DEPTH``. Free for the few brackets of most bodies."""
    return (content_type is None or "json" in content_type.lower()) and nests_deeper_than(body)


# FastAPI's answer to a JSON body its parser raised anything but a syntax error for.
UNPARSED_BODY = "There was an error parsing the body"


def unparsed_body_problem(error: BaseException | None) -> str:
    """Why Python's JSON parser refused a body (``error``, what it raised), naming ``body``."""
    if isinstance(error, UnicodeDecodeError):
        return f"body: not valid UTF-8 (byte {error.start})"
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        return f"body: an integer of more than {sys.get_int_max_str_digits()} digits"
    return "body: not valid JSON"


class BoundedJSONRoute(APIRoute):
    """A route whose JSON body nested too deep is a 422 naming ``body``, before FastAPI parses it; and one
    that FastAPI could not parse for anything but its syntax is a 422 saying why."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if request.method in BODY_METHODS and too_deep_json(content_type, await request.body()):
                raise ProblemError(422, too_deep_problem("body"))
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code == 400 and exc.detail == UNPARSED_BODY:
                    raise ProblemError(422, unparsed_body_problem(exc.__cause__)) from None
                raise

        return bounded
