"""Observability on the real stack: the API's GET /metrics, the workers' exporters and JSON log lines,
after predictions ran through Redis, a Celery worker, S3 and the webhook worker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.predictions.record import Prediction
from shared.runtime.celery_config import create_celery
from shared.scheduling import queues
from shared.settings import tenant_of, token_digest
from tests.support import data_uri, png_bytes, wait_for_status, wait_until
from tests.support.predictions import create_with_webhook
from tests.support.receiver import WebhookReceiver
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration

MODEL = "kiln/sd2-depth2img"
TERMINAL = {"succeeded", "failed", "canceled"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(url: str, before: Samples, name: str, **labels: str) -> Samples:
    """Scrape until ``name{labels}`` is above its value in ``before`` (workers count right after the
    status change a client can see)."""

    def grown() -> Samples | None:
        now = scrape(url)
        return now if value(now, name, **labels) > value(before, name, **labels) else None

    return wait_until(grown, 30, what=f"{name}{labels} to grow at {url}")


@pytest.fixture
def receiver(client) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(client.get("/v1/webhooks/default/secret").json()["key"]) as r:
        yield r


def test_api_and_workers_export_prediction_metrics(stack, client, receiver):
    api_url = f"{stack.base_url}/metrics"
    gpu_url = f"http://127.0.0.1:{stack.metrics_ports['gpu-worker']}/metrics"
    webhooks_url = f"http://127.0.0.1:{stack.metrics_ports['webhooks']}/metrics"
    api_before, gpu_before, webhooks_before = scrape(api_url), scrape(gpu_url), scrape(webhooks_url)

    created = create_with_webhook(client, receiver.url("/metrics"), ["completed"])
    done = wait_for_status(client, created["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]

    api = scrape(api_url)
    assert (
        value(api, "kiln_predictions_created_total", model=MODEL)
        >= value(api_before, "kiln_predictions_created_total", model=MODEL) + 1
    )
    assert value(api, "kiln_redis_up") == 1
    for queue in (*queues.GPU_QUEUES, queues.WEBHOOKS):
        for step in queues.PRIORITY_STEPS:
            assert (("kiln_queue_length", (("priority", str(step)), ("queue", queue)))) in api, (queue, step)
    for family in queues.GPU_QUEUES:
        assert ("kiln_queued_predictions", (("family", family),)) in api

    gpu = grew(gpu_url, gpu_before, "kiln_predictions_finished_total", model=MODEL, status="succeeded")
    for histogram, labels in [
        ("kiln_prediction_predict_seconds_count", {"status": "succeeded"}),
        ("kiln_prediction_upload_seconds_count", {}),
        ("kiln_prediction_queue_wait_seconds_count", {}),
    ]:
        assert value(gpu, histogram, model=MODEL, **labels) > value(gpu_before, histogram, model=MODEL, **labels), (
            histogram
        )
    assert value(gpu, "kiln_prediction_predict_seconds_sum", model=MODEL, status="succeeded") > 0
    # The tiny profile runs on the CPU: no CUDA, so no GPU memory series.
    assert not any(name.startswith("kiln_gpu_memory") for name, _ in gpu)

    wait_until(lambda: receiver.at("/metrics"), 60, what="the completed webhook")
    grew(webhooks_url, webhooks_before, "kiln_webhook_deliveries_total", event="completed", outcome="delivered")


def test_a_queued_cancel_is_counted_by_the_api_that_made_it(stack):
    """A prediction canceled before any worker took it finishes in the API process."""
    settings = stack.settings()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN_A}"}) as api:
        before = parse(api.get("/metrics").text)
        # Stored but never enqueued: it stays queued until canceled.
        queued = Prediction(
            tenant=tenant_of(token_digest(TOKEN_A)), model=MODEL, version="v", input={}, queue=queues.SD2_DEPTH
        )
        api.app.state.services.store.create(queued)
        assert api.post(f"/v1/predictions/{queued.id}/cancel").json()["status"] == "canceled"
        after = parse(api.get("/metrics").text)
    labels = {"model": MODEL, "status": "canceled"}
    assert (
        value(after, "kiln_predictions_finished_total", **labels)
        == value(before, "kiln_predictions_finished_total", **labels) + 1
    )


def test_queue_length_reads_the_lists_kombu_writes_for_each_priority(stack):
    """The list names KEDA and /metrics read (shared.scheduling.queues.priority_lists) are the ones Celery fills."""
    probe = "kiln-test-probe"
    celery = create_celery(stack.settings())
    lists = queues.priority_lists(probe)
    client = redis.Redis.from_url(stack.redis_url)
    try:
        for step in (queues.PRIORITY_INTERACTIVE, queues.PRIORITY_BATCH, queues.PRIORITY_BATCH):
            celery.send_task(queues.PREDICT_TASK, args=["probe"], queue=probe, priority=step)
        lengths = {step: client.llen(name) for step, name in lists.items()}
        assert lengths == {step: 0 for step in queues.PRIORITY_STEPS} | {0: 1, 6: 2}
    finally:
        client.delete(*lists.values())
        client.close()
        celery.close()


def test_log_lines_are_json_with_the_prediction_id(stack, client):
    created = client.post(
        "/v1/predictions",
        json={
            "version": MODEL,
            "input": {"prompt": "a kiln", "input_image": data_uri(png_bytes(64, 64)), "num_inference_steps": 2},
        },
    )
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]
    assert wait_for_status(client, prediction_id, TERMINAL)["status"] == "succeeded"

    def lines_about(log_name: str) -> list[dict]:
        lines = [json.loads(line) for line in (stack.logs / log_name).read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("prediction_id") == prediction_id]

    worker_lines = wait_until(lambda: lines_about("gpu-worker.log"), 30, what="the worker's log lines")
    assert {"time", "level", "logger", "message"} <= worker_lines[0].keys()
    assert any(f"prediction {prediction_id} succeeded" in line["message"] for line in worker_lines)
    # The API tags the requests about one prediction (here: the client's polling) with its id.
    api_lines = wait_until(lambda: lines_about("api.log"), 30, what="the API's log lines")
    assert any(line["logger"] == "uvicorn.access" and prediction_id in line["message"] for line in api_lines)
