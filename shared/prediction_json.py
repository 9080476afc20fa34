"""A prediction as clients see it: Replicate's JSON shape, built from the stored record, and the
URLs in it (the prediction, its page, its signed output files)."""

from __future__ import annotations

from typing import Any

from shared.prediction import Prediction, format_timestamp
from shared.secrets import sign_path


def prediction_path(prediction_id: str) -> str:
    return f"/v1/predictions/{prediction_id}"


def prediction_page_path(prediction_id: str) -> str:
    """The prediction's page in the playground (``urls.web``)."""
    return f"/playground/predictions/{prediction_id}"


def output_path(prediction_id: str, name: str) -> str:
    return f"{prediction_path(prediction_id)}/output/{name}"


def output_url(base_url: str, prediction_id: str, name: str, url_secret: str) -> str:
    """Served by the API, not presigned S3: the Python client downloads with its Bearer header and
    follows no redirect (S3 rejects a presigned URL that also carries Authorization), while the JS
    client sends no header at all. The signature makes the URL work for both."""
    path = output_path(prediction_id, name)
    return f"{base_url}{path}?sig={sign_path(url_secret, path)}"


def render_prediction(prediction: Prediction, base_url: str, url_secret: str) -> dict[str, Any]:
    get_url = f"{base_url}{prediction_path(prediction.id)}"
    urls = {
        "get": get_url,
        "cancel": f"{get_url}/cancel",
        "stream": f"{get_url}/stream",
        "web": f"{base_url}{prediction_page_path(prediction.id)}",
    }
    output = None
    if prediction.output is not None and not prediction.data_removed:
        output = [output_url(base_url, prediction.id, name, url_secret) for name in prediction.output]
    metrics: dict[str, float] = {}
    if prediction.predict_time is not None:
        metrics["predict_time"] = prediction.predict_time
    if prediction.total_time is not None:
        metrics["total_time"] = prediction.total_time
    return {
        "id": prediction.id,
        "model": prediction.model,
        "version": prediction.version,
        "input": prediction.input,
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
    }
