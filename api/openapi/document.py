"""The API's own ``/openapi.json``, as exact as the wire: every operation lists the statuses it can
answer, each error as the ``application/problem+json`` body it is, and binary answers as binary.

FastAPI documents a 422 ``HTTPValidationError`` in ``application/json`` and nothing else; Kiln's
errors are problem documents (``api.errors``) and come from dependencies FastAPI cannot see (auth,
rate limits, Redis). ``install_openapi`` rewrites the generated document once, from the rules below.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from api.errors import PROBLEM_JSON
from api.openapi.schemas import RESPONSE_BODIES, SCHEMAS

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "required": ["title", "detail", "status"],
    "properties": {
        "title": {"type": "string"},
        "detail": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
RATELIMIT_HEADERS = {
    "ratelimit-remaining": {"description": "Requests left in the token's bucket.", "schema": {"type": "integer"}},
    "ratelimit-reset": {"description": "Seconds until the bucket is full again.", "schema": {"type": "integer"}},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}

# Every /v1 operation: a token problem, a bad parameter or body, the rate limit, Redis or S3 down.
V1_STATUSES = {401, 422, 429, 503}
# Answers that bodies, headers or paths add (checked in this order against each operation).
BODY_STATUSES = {413}
PATH_PARAMETER_STATUSES = {404}
# Parameters answered with a 400 naming them when their value is not one the API takes.
PARAMETERS_WITH_400 = {
    "cursor",
    "created_after",
    "created_before",
    "source",
    "Cancel-After",
    "Kiln-Priority",
    "Last-Event-ID",
    "Idempotency-Key",
    "prefer",
    "state",
    "since",
    "until",
}
# What particular operations add, by (method, path).
EXTRA_STATUSES: dict[tuple[str, str], set[int]] = {
    ("post", "/v1/predictions"): {409},
    ("post", "/v1/models/{owner}/{name}/predictions"): {404, 409},
    ("post", "/v1/predictions/batch"): {409},
    ("post", "/v1/batches"): {409},
    ("post", "/v1/deployments"): {409},
    ("post", "/v1/deployments/{owner}/{name}/predictions"): {409},
    ("delete", "/v1/predictions/{prediction_id}"): {409},
    ("delete", "/v1/batches/{batch_id}"): {409},
    ("post", "/v1/webhooks/deliveries/{webhook_id}/retry"): {409},
    ("get", "/v1/predictions/{prediction_id}/stream"): {403},
    ("get", "/v1/predictions/{prediction_id}/output/{name}"): {403, 410},
    ("get", "/v1/files/{file_id}/download"): {410},
    # A malformed multipart body (Starlette's parser).
    ("post", "/v1/files"): {400, 413},
}
# Operations that answer bytes, not JSON: their media types.
BINARY_ANSWERS: dict[tuple[str, str], list[str]] = {
    # Images, or files a model returns as they are (return_embeddings: .safetensors).
    ("get", "/v1/predictions/{prediction_id}/output/{name}"): [
        "image/png",
        "image/jpeg",
        "image/webp",
        "application/octet-stream",
    ],
    ("get", "/v1/files/{file_id}/download"): ["*/*"],
    ("get", "/v1/batches/{batch_id}/results"): ["application/jsonl"],
    ("get", "/v1/batches/{batch_id}/inputs/{name}"): ["image/png", "image/jpeg", "image/webp"],
}


def statuses_of(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses ``operation`` can answer."""
    if not path.startswith("/v1/"):
        return {503} if path == "/health" else set()
    found = set(V1_STATUSES)
    if "requestBody" in operation:
        found |= BODY_STATUSES
    parameters = operation.get("parameters", [])
    if any(parameter["in"] == "path" for parameter in parameters):
        found |= PATH_PARAMETER_STATUSES
    if any(parameter["name"] in PARAMETERS_WITH_400 for parameter in parameters):
        found.add(400)
    return found | EXTRA_STATUSES.get((method, path), set())


def problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    """The problem document answered with ``status``, described as the route said (else the HTTP phrase)."""
    return {
        "description": description or HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _sse_as_text(media: dict[str, Any]) -> None:
    """FastAPI describes SSE streams with OpenAPI 3.2's ``itemSchema`` inside a document that says
    3.1.0, which validators reject; describe them as text streams instead."""
    if media.pop("itemSchema", None) is not None:
        media["schema"] = {"type": "string"}


def exact(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (as FastAPI generated it) with Kiln's statuses, problem bodies and media types."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas.update(SCHEMAS)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(statuses_of(method, path, operation)):
                described = responses.get(str(status), {}).get("description")
                responses[str(status)] = problem_response(status, described)
            for status, response in responses.items():
                for media in response.get("content", {}).values():
                    _sse_as_text(media)
                if status.startswith("2") and path.startswith("/v1/"):
                    response.setdefault("headers", {}).update(RATELIMIT_HEADERS)
            if (method, path) in RESPONSE_BODIES:
                ok = next(status for status in responses if status.startswith("2"))
                responses[ok]["content"] = {"application/json": {"schema": RESPONSE_BODIES[(method, path)]}}
            if (method, path) in BINARY_ANSWERS:
                ok = next(status for status in responses if status.startswith("2"))
                responses[ok]["content"] = {media_type: BINARY for media_type in BINARY_ANSWERS[(method, path)]}
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the exact document (built once, on the first request for it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = exact(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
