"""Errors as RFC 9457 ``application/problem+json``: ``{"title", "detail", "status"}`` everywhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.intake.text import find_invalid_text, printable
from shared.db.client import AlreadyStored
from shared.storage.objects import StorageUnavailable

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class ProblemError(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


def _printable(value: Any) -> Any:
    """``value`` (JSON) with every string made encodable: a problem may quote the bad text it names."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


def problem_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = _printable({"title": HTTPStatus(status).phrase, "detail": detail, "status": status, **extra})
    return body


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(
        problem_body(status, detail, **extra), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def describe_validation_errors(
    errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence naming every failing field and its limit, plus the errors as data."""
    items = [{"field": _location(prefix + tuple(err["loc"])), "message": err["msg"]} for err in errors]
    return "; ".join(f"{item['field']}: {item['message']}" for item in items), items


def input_validation_problem(exc: ValidationError, prefix: tuple[str, ...]) -> ProblemError:
    detail, items = describe_validation_errors(exc.errors(include_url=False), prefix)
    return ProblemError(422, detail, errors=items)


def reject_invalid_text(value: Any, prefix: str = "") -> None:
    """A 422 naming the first string or key of ``value`` (JSON) that is not valid Unicode."""
    found = find_invalid_text(value)
    if found is not None:
        raise ProblemError(422, f"{found.field(prefix)}: {found.problem}")


# The methods an Allow header may name.
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path (asking each route, as routing does)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches(dict(request.scope, method=method))[0] is Match.FULL for route in routes)
    ]


# Where a create whose token check was left to its store keeps it (``api.deps.DeferredAuth``).
DEFERRED_AUTH_STATE_KEY = "deferred_auth"
Handler = Callable[[Request, Any], Awaitable[JSONResponse]]


async def _deferred_auth_refusal(request: Request) -> ProblemError | None:
    """The 401 or 429 of a create's token check still pending (``api.deps.DeferredAuth``), made now: a
    revoked token or a spent rate limit answers before any other error, as when the token is checked
    first. None when no check was pending, the token is fine, or Redis could not tell (then the error's
    own answer stands)."""
    deferred = getattr(request.state, DEFERRED_AUTH_STATE_KEY, None)
    if deferred is None or not deferred.pending:
        return None
    try:
        await deferred.settle()
    except ProblemError as exc:
        return exc
    except Exception:  # Redis down: the error being answered says as much
        return None
    return None


def install_error_handlers(app: FastAPI) -> None:
    def handles(*types: type[Exception]) -> Callable[[Handler], Handler]:
        """Register a handler for ``types``, answering a pending token check's refusal first."""

        def register(handler: Handler) -> Handler:
            async def answer(request: Request, exc: Any) -> JSONResponse:
                refused = await _deferred_auth_refusal(request)
                if refused is not None:
                    return problem_response(refused.status, refused.detail, refused.headers, **refused.extra)
                return await handler(request, exc)

            for kind in types:
                app.add_exception_handler(kind, answer)
            return handler

        return register

    @handles(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)

    @handles(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route of the path only (GET of
            # /v1/files/{id}, not its DELETE): name every method the path answers.
            headers = (headers or {}) | {"Allow": ", ".join(allowed_methods(request))}
        return problem_response(exc.status_code, str(exc.detail), headers)

    @handles(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI prefixes locations with "body"/"query"; drop it so fields read as the client sent them.
        errors = [dict(err, loc=tuple(err["loc"])[1:] or tuple(err["loc"])) for err in exc.errors()]
        detail, items = describe_validation_errors(errors)
        return problem_response(422, detail, errors=items)

    @handles(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    async def _redis_down(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return problem_response(503, "the prediction store (Redis) is unavailable; retry shortly", {"Retry-After": "5"})

    @handles(AlreadyStored)
    async def _id_taken(_: Request, exc: AlreadyStored) -> JSONResponse:
        log.error("a create's new id is already stored; nothing was written: %s", exc)
        return problem_response(503, "a new id was already taken; nothing was stored; retry", {"Retry-After": "1"})

    @handles(StorageUnavailable, BotoCoreError, ClientError)
    async def _storage_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("storage unavailable: %s", exc)
        return problem_response(503, "object storage (S3) is unavailable; retry shortly", {"Retry-After": "5"})

    @handles(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(500, "internal server error")
