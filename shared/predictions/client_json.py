"""A prediction as clients see it: Replicate's JSON shape, built from the stored record, and the
URLs in it (the prediction, its page, its signed, expiring output files)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from shared.predictions.record import Prediction, format_timestamp
from shared.security.signed_urls import UrlSigner


def prediction_path(prediction_id: str) -> str:
    return f"/v1/predictions/{prediction_id}"


def prediction_page_path(prediction_id: str) -> str:
    """The prediction's page in the playground (``urls.web``)."""
    return f"/playground/predictions/{prediction_id}"


def stream_path(prediction_id: str) -> str:
    """The prediction's Server-Sent Events (``urls.stream``, signed: it works without a token)."""
    return f"{prediction_path(prediction_id)}/stream"


def output_path(prediction_id: str, name: str) -> str:
    return f"{prediction_path(prediction_id)}/output/{name}"


def input_path(prediction_id: str, name: str) -> str:
    """Where a stored image input of the prediction is served (``api.intake.image_staging``)."""
    return f"{prediction_path(prediction_id)}/inputs/{name}"


def outputs_kept_until(completed_at: datetime | None, retention_s: float) -> float:
    """When a prediction's outputs are deleted (unix seconds): retention after it completed, or after
    now while it runs. No output URL outlives that."""
    return (completed_at.timestamp() if completed_at else time.time()) + retention_s


def output_url(base_url: str, prediction_id: str, name: str, signer: UrlSigner, not_after: float) -> str:
    """Served by the API, not presigned S3: the Python client downloads with its Bearer header and
    follows no redirect (S3 rejects a presigned URL that also carries Authorization), while the JS
    client sends no header at all. The signature (which expires) makes the URL work for both."""
    return signer.url(base_url, output_path(prediction_id, name), not_after=not_after)


def render_outputs(
    base_url: str,
    prediction_id: str,
    names: list[str],
    completed_at: datetime | None,
    signer: UrlSigner,
    retention_s: float,
) -> list[str]:
    """The signed URLs of a prediction's output files, fresh, none outliving the files."""
    kept_until = outputs_kept_until(completed_at, retention_s)
    return [output_url(base_url, prediction_id, name, signer, kept_until) for name in names]


def render_prediction(
    prediction: Prediction, base_url: str, signer: UrlSigner, retention_s: float, queue_position: int | None = None
) -> dict[str, Any]:
    """Replicate's prediction object, with Kiln's ``priority`` and ``queue_position`` (how many of its model
    family's queued predictions start before it, as ``shared.scheduling.queue_lines`` reads it; null
    unless queued). Replicate's clients ignore fields they do not know."""
    # Its own retention, when shorter, bounds its URLs too (kept 0 s, they serve its completed webhook).
    retention_s = min(retention_s, prediction.retention_s or retention_s)
    get_url = f"{base_url}{prediction_path(prediction.id)}"
    urls = {
        "get": get_url,
        "cancel": f"{get_url}/cancel",
        "stream": signer.url(base_url, stream_path(prediction.id)),
        "web": f"{base_url}{prediction_page_path(prediction.id)}",
    }
    output = None
    if prediction.output is not None and not prediction.data_removed:
        output = render_outputs(
            base_url, prediction.id, prediction.output, prediction.completed_at, signer, retention_s
        )
    inputs = render_inputs(prediction, base_url, signer, retention_s)
    metrics: dict[str, float] = {}
    if prediction.predict_time is not None:
        metrics["predict_time"] = prediction.predict_time
    if prediction.total_time is not None:
        metrics["total_time"] = prediction.total_time
    rendered: dict[str, Any] = {
        "id": prediction.id,
        "model": prediction.model,
        "version": prediction.version,
        "input": inputs,
        "output": output,
        "logs": prediction.logs,
        "error": prediction.error,
        "status": prediction.status.value,
        "created_at": format_timestamp(prediction.created_at),
        "started_at": format_timestamp(prediction.started_at),
        "completed_at": format_timestamp(prediction.completed_at),
        "urls": urls,
        "metrics": metrics,
        "data_removed": prediction.data_removed,
        "source": prediction.source,
        "priority": prediction.priority,
        "queue_position": queue_position,
    }
    if prediction.deployment is not None:
        rendered["deployment"] = prediction.deployment
    if prediction.deadline is not None:
        rendered["deadline"] = format_timestamp(prediction.deadline)
    if prediction.retention_s is not None:
        rendered["retention_s"] = prediction.retention_s
    return rendered


def _resigned(url: str, signer: UrlSigner, not_after: float | None = None) -> str:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
    return signer.url(base, parts.path, not_after=not_after)


def stored_input_name(prediction: Prediction, uri: str) -> str | None:
    """The name of the stored input ``uri`` refers to, when it is the reference that stands in the
    record for a large data URI (``api.intake.image_staging``: ``<base>/v1/predictions/<id>/inputs/<name>``);
    else None. The object lives at ``shared.storage.objects.input_key(prediction.id, name)``."""
    prefix = f"{prediction.base_url}{input_path(prediction.id, '')}"
    name = uri.removeprefix(prefix)
    return name if name != uri and name and "/" not in name and "?" not in name else None


def batch_input_path(batch_id: str, name: str) -> str:
    """Where an image input that a batch's items share is served (``api.intake.image_staging``)."""
    return f"/v1/batches/{batch_id}/inputs/{name}"


def shared_input_path(prediction: Prediction, uri: str) -> str | None:
    """The path of the batch's stored input ``uri`` refers to, when it is the reference that stands
    in an item's record for a large data URI the batch's items share; else None."""
    if prediction.batch_id is None:
        return None
    prefix = f"{prediction.base_url}{batch_input_path(prediction.batch_id, '')}"
    name = uri.removeprefix(prefix)
    valid = name != uri and name and "/" not in name and "?" not in name
    return batch_input_path(prediction.batch_id, name) if valid else None


def _signed_inputs(value: Any, sign: Callable[[str], str | None]) -> Any:
    if isinstance(value, str):
        return sign(value) or value
    if isinstance(value, list):
        return [_signed_inputs(item, sign) for item in value]
    if isinstance(value, dict):
        return {key: _signed_inputs(item, sign) for key, item in value.items()}
    return value


def render_inputs(prediction: Prediction, base_url: str, signer: UrlSigner, retention_s: float) -> dict[str, Any]:
    """The input as given, except that each reference to a stored copy of a large data URI (the
    prediction's own, or one its batch's items share) is shown as a signed URL to it (served by the
    API, expiring like outputs)."""
    kept_until = outputs_kept_until(prediction.completed_at, retention_s)

    def sign(value: str) -> str | None:
        name = stored_input_name(prediction, value)
        path = input_path(prediction.id, name) if name is not None else shared_input_path(prediction, value)
        return None if path is None else signer.url(base_url, path, not_after=kept_until)

    rendered: dict[str, Any] = _signed_inputs(prediction.input, sign)
    return rendered


def has_stored_inputs(prediction: Prediction) -> bool:
    """Whether the input holds references to stored copies (rendering them needs the URL signer)."""
    return any(stored_input_name(prediction, value) is not None for value in _strings(prediction.input))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def refresh_output_urls(body: str, signer: UrlSigner, retention_s: float) -> str:
    """A rendered prediction (a webhook body, recorded earlier) with freshly signed output and stream
    URLs, so a delivery retried long after the event still links to what it can fetch."""
    rendered = json.loads(body)
    outputs = rendered.get("output")
    urls = rendered.get("urls")
    stream = urls.get("stream") if isinstance(urls, dict) else None
    has_outputs = isinstance(outputs, list) and bool(outputs)
    if not has_outputs and not isinstance(stream, str):
        return body
    if isinstance(stream, str):
        rendered["urls"] = urls | {"stream": _resigned(stream, signer)}
    if has_outputs:
        completed_at = rendered.get("completed_at")
        kept_until = outputs_kept_until(datetime.fromisoformat(completed_at) if completed_at else None, retention_s)
        rendered["output"] = [_resigned(url, signer, kept_until) for url in outputs]
    return json.dumps(rendered)
