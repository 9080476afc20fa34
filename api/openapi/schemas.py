"""The response bodies of ``/openapi.json`` (``api.openapi.document``): the objects Kiln answers with,
as Replicate's clients read them. The routes build these as plain dicts (fast, and shared with the
webhook bodies), so their schemas are written here, and the suite's schemathesis run checks every
answer against them."""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
URL = {"type": "string", "format": "uri"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["next", "previous", "results"],
        "properties": {
            "next": {"type": ["string", "null"], "format": "uri"},
            "previous": {"type": ["string", "null"], "format": "uri"},
            "results": {"type": "array", "items": ref(name)},
        },
    }


ACCOUNT = {
    "type": "object",
    "required": ["type", "username", "name", "github_url"],
    "properties": {
        "type": {"enum": ["user", "organization"]},
        "username": STRING,
        "name": STRING,
        "github_url": NULLABLE_STRING,
    },
}

PREDICTION_FIELDS = "id model version input output logs error status created_at started_at completed_at"
PREDICTION = {
    "type": "object",
    "required": [*PREDICTION_FIELDS.split(), "urls", "metrics", "data_removed", "source", "priority", "queue_position"],
    "properties": {
        "id": STRING,
        "model": STRING,
        "version": STRING,
        "input": {"type": "object"},
        "output": {"type": ["array", "null"], "items": URL},
        "logs": STRING,
        "error": NULLABLE_STRING,
        "status": {"enum": ["starting", "processing", "succeeded", "failed", "canceled", "aborted"]},
        "created_at": TIMESTAMP,
        "started_at": NULLABLE_TIMESTAMP,
        "completed_at": NULLABLE_TIMESTAMP,
        "deadline": TIMESTAMP,
        "deployment": STRING,
        "retention_s": {"type": "integer", "minimum": 0},
        "urls": {
            "type": "object",
            "required": ["get", "cancel", "stream"],
            "properties": {"get": URL, "cancel": URL, "stream": URL, "web": URL},
        },
        "metrics": {
            "type": "object",
            "properties": {"predict_time": {"type": "number"}, "total_time": {"type": "number"}},
        },
        "data_removed": {"type": "boolean"},
        "source": {"enum": ["api", "web"]},
        "priority": {
            "enum": ["normal", "low"],
            "description": "Kiln extension: `low` starts only when no `normal` prediction of its model family waits.",
        },
        "queue_position": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "Kiln extension: while queued, how many queued predictions of its model family start "
            "before it (0: it is next); null once it started or ended. Exact for first-come work (single "
            "creates, inline batches); for `/v1/batches` items and low-priority work, which tenants take in "
            "turns, exact with one tenant and otherwise at most that (docs/scheduling.md).",
        },
    },
}

DEPLOYMENT = {
    "type": "object",
    "required": ["owner", "name", "current_release"],
    "properties": {
        "owner": STRING,
        "name": STRING,
        "current_release": {
            "type": "object",
            "required": ["number", "model", "version", "created_at", "created_by", "configuration"],
            "properties": {
                "number": {"type": "integer", "minimum": 1},
                "model": STRING,
                "version": STRING,
                "created_at": TIMESTAMP,
                "created_by": ref("Account"),
                "configuration": {
                    "type": "object",
                    "required": ["hardware", "min_instances", "max_instances"],
                    "properties": {
                        "hardware": STRING,
                        "min_instances": {"type": "integer", "minimum": 0},
                        "max_instances": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
    },
}

FILE = {
    "type": "object",
    "required": ["id", "name", "content_type", "size", "checksums", "metadata", "created_at", "urls"],
    "properties": {
        "id": STRING,
        "name": STRING,
        "content_type": STRING,
        "size": {"type": "integer", "minimum": 0},
        "etag": STRING,
        "checksums": {"type": "object", "properties": {"sha256": STRING, "md5": STRING}},
        "metadata": {"type": "object"},
        "created_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "urls": {"type": "object", "required": ["get"], "properties": {"get": URL}},
    },
}

HARDWARE = {"type": "object", "required": ["sku", "name"], "properties": {"sku": STRING, "name": STRING}}

COLLECTION = {
    "type": "object",
    "required": ["slug", "name", "description"],
    "properties": {"slug": STRING, "name": STRING, "description": STRING, "models": {"type": "array"}},
}

WEBHOOK_ATTEMPT = {
    "type": "object",
    "required": ["at", "status_code", "error", "duration_ms"],
    "properties": {
        "at": TIMESTAMP,
        "status_code": {"type": ["integer", "null"]},
        "error": NULLABLE_STRING,
        "duration_ms": {"type": "integer", "minimum": 0},
    },
}

WEBHOOK_DELIVERY = {
    "type": "object",
    "required": ["id", "event", "state", "url", "created_at", "next_attempt_at", "attempts"],
    "properties": {
        "id": STRING,
        "event": {"enum": ["start", "output", "logs", "completed"]},
        "state": {"enum": ["pending", "delivered", "failed"]},
        "url": STRING,
        "prediction_id": STRING,
        "batch_id": STRING,
        "created_at": TIMESTAMP,
        "next_attempt_at": NULLABLE_TIMESTAMP,
        "attempts": {"type": "array", "items": ref("WebhookAttempt")},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "WebhookAttempt": WEBHOOK_ATTEMPT,
    "WebhookDelivery": WEBHOOK_DELIVERY,
    "WebhookDeliveryPage": page_of("WebhookDelivery"),
    "WebhookDeliveryList": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": ref("WebhookDelivery")}},
    },
    "Account": ACCOUNT,
    "Prediction": PREDICTION,
    "PredictionPage": page_of("Prediction"),
    "Deployment": DEPLOYMENT,
    "DeploymentPage": page_of("Deployment"),
    "File": FILE,
    "FilePage": page_of("File"),
    "Hardware": HARDWARE,
    "Collection": COLLECTION,
    "CollectionPage": page_of("Collection"),
}

# The success body of each operation that answers one of the objects above, by (method, path).
RESPONSE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/predictions"): ref("Prediction"),
    ("get", "/v1/predictions"): ref("PredictionPage"),
    ("post", "/v1/models/{owner}/{name}/predictions"): ref("Prediction"),
    ("get", "/v1/predictions/{prediction_id}"): ref("Prediction"),
    ("post", "/v1/predictions/{prediction_id}/cancel"): ref("Prediction"),
    ("delete", "/v1/predictions/{prediction_id}"): ref("Prediction"),
    ("get", "/v1/account"): ref("Account"),
    ("get", "/v1/hardware"): {"type": "array", "items": ref("Hardware")},
    ("get", "/v1/collections"): ref("CollectionPage"),
    ("get", "/v1/collections/{slug}"): ref("Collection"),
    ("get", "/v1/deployments"): ref("DeploymentPage"),
    ("post", "/v1/deployments"): ref("Deployment"),
    ("get", "/v1/deployments/{owner}/{name}"): ref("Deployment"),
    ("patch", "/v1/deployments/{owner}/{name}"): ref("Deployment"),
    ("post", "/v1/deployments/{owner}/{name}/predictions"): ref("Prediction"),
    ("post", "/v1/files"): ref("File"),
    ("get", "/v1/files"): ref("FilePage"),
    ("get", "/v1/files/{file_id}"): ref("File"),
    ("get", "/v1/predictions/{prediction_id}/webhooks"): ref("WebhookDeliveryList"),
    ("get", "/v1/batches/{batch_id}/webhooks"): ref("WebhookDeliveryList"),
    ("get", "/v1/webhooks/deliveries"): ref("WebhookDeliveryPage"),
    ("post", "/v1/webhooks/deliveries/{webhook_id}/retry"): ref("WebhookDelivery"),
    ("post", "/v1/webhooks/deliveries/retry"): {
        "type": "object",
        "required": ["retried", "remaining"],
        "properties": {"retried": {"type": "integer", "minimum": 0}, "remaining": {"type": "integer", "minimum": 0}},
    },
}
