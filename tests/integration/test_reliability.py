"""Crashes, shutdowns, time limits and outages lose nothing: real processes killed and restarted."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.predictions.retention import Janitor
from shared.runtime.celery_config import create_celery
from shared.scheduling.queues import PREDICT_TASK, SD2_DEPTH
from shared.storage.s3 import Storage
from tests.support import (
    assert_problem,
    data_uri,
    paused,
    png_bytes,
    requests_waiting_at,
    wait_for_status,
    wait_until,
)
from tests.support.predictions import TERMINAL, create, depth2img_input, run_xl
from tests.support.receiver import WebhookReceiver
from tests.support.stack import SHUTDOWN_GRACE_S, TOKEN_A, extra_api
from tests.support.step_gates import StepGate, wait_until_waiting
from tests.support.worker_inputs import gradient, png_uri

SD2_MODEL = "kiln/sd2-depth2img"
# The time-limit test's stand-in worker limits one of the two XL models it serves.
TIME_LIMITED_MODEL = "kiln/ip-adapter-openpose-xl"
UNLIMITED_MODEL = "kiln/ip-adapter-depth-xl"
TIME_LIMIT_S = 2
pytestmark = pytest.mark.integration


def completed_deliveries(receiver: WebhookReceiver, path: str, prediction_id: str) -> set[str]:
    return {
        r.headers["webhook-id"] for r in receiver.at(path) if r.body["id"] == prediction_id and r.status in TERMINAL
    }


def test_a_worker_killed_mid_denoise_is_replaced_and_the_prediction_completes_once(stack, client):
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver, StepGate(stack.redis_url) as gate:
        created = client.post(
            "/v1/predictions",
            json={
                "version": "kiln/sd2-depth2img",
                "webhook": receiver.url("/killed"),
                "webhook_events_filter": ["completed"],
                "input": {"input_image": _image(), "prompt": gate.prompt, "num_inference_steps": 4, "seed": 1},
            },
        ).json()
        wait_until_waiting(client, created["id"])  # mid-denoise, on any machine, until the gate opens
        with stack.gpu_worker_down(signal.SIGKILL):
            gate.open()
        done = wait_for_status(client, created["id"], TERMINAL, timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert "Running again (attempt 2)" in done["logs"]
        wait_until(lambda: completed_deliveries(receiver, "/killed", created["id"]), 30, what="the completed webhook")

        # A late duplicate of the original message (Celery redelivery) changes nothing.
        with create_celery(stack.settings()) as celery:
            duplicate = celery.send_task(PREDICT_TASK, args=[created["id"]], queue=SD2_DEPTH)
        log = stack.logs / "gpu-worker.log"
        handled = f"Task {PREDICT_TASK}[{duplicate.id}] succeeded"
        wait_until(lambda: handled in log.read_text(), 60, what="the worker to take the duplicate")
        assert f"prediction {created['id']} is succeeded; not running it" in log.read_text()
        again = client.get(f"/v1/predictions/{created['id']}").json()
        assert (again["status"], again["completed_at"], again["output"]) == (
            "succeeded",
            done["completed_at"],
            done["output"],
        )
        assert len(completed_deliveries(receiver, "/killed", created["id"])) == 1


def test_sigterm_hands_a_running_prediction_back_after_the_grace_period(stack, client):
    with StepGate(stack.redis_url) as gate:
        created = create(client, prompt=gate.prompt, width=64, height=64)
        # Held at its gate: still running when the grace period ends, however fast the machine is.
        assert wait_until_waiting(client, created["id"])["status"] == "processing"
        sigterm = time.monotonic()
        with stack.gpu_worker_down(signal.SIGTERM):  # a warm shutdown; the block runs once the worker exited
            waited = time.monotonic() - sigterm
            handed_back = client.get(f"/v1/predictions/{created['id']}").json()
            gate.open()
    assert waited >= SHUTDOWN_GRACE_S, "the prediction was given its grace period"
    assert handed_back["status"] == "starting"
    assert "handed back to the queue" in handed_back["logs"]
    done = wait_for_status(client, created["id"], TERMINAL, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert "Running again" not in done["logs"], "a hand-back is not counted as a worker death"


def test_a_prediction_over_its_time_limit_fails_and_the_worker_stays_usable(stack, client):
    """A stand-in SDXL worker limits one XL model to a few seconds (the other tests' predictions of it
    run on the stack's own SDXL worker, without a limit): a prediction held at its gate runs past
    it and fails, and the same worker process then runs the other XL model's prediction."""
    limits = {"KILN_MODEL_TIME_LIMITS_S": json.dumps({TIME_LIMITED_MODEL: TIME_LIMIT_S})}
    with stack.stand_in_worker("sdxl-worker", limits) as stand_in:
        with StepGate(stack.redis_url) as gate:  # never opened: the prediction runs until its time limit
            slow = run_xl(client, TIME_LIMITED_MODEL, prompt=gate.prompt)
        usable = run_xl(client, UNLIMITED_MODEL)
    assert slow["status"] == "failed"
    assert slow["error"] == f"prediction exceeded its time limit of {TIME_LIMIT_S} s"
    assert usable["status"] == "succeeded", usable["error"]
    ran_there = (stack.logs / f"{stand_in}.log").read_text()
    assert slow["id"] in ran_there and usable["id"] in ran_there, "both ran on the stand-in"


def test_a_redis_restart_loses_no_accepted_prediction(stack, client):
    # One running when Redis stops, the others queued.
    accepted = [create(client, num_inference_steps=2)["id"] for _ in range(3)]
    stack.redis.stop()
    try:
        started = time.monotonic()
        assert client.get("/health").status_code == 503
        refused = client.post(
            "/v1/predictions", json={"version": "kiln/sd2-depth2img", "input": {"input_image": _image()}}
        )
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
        assert time.monotonic() - started < 20, "answers while Redis is down, instead of hanging"
    finally:
        stack.redis.start()
    wait_until(lambda: client.get("/health").status_code == 200, 30, what="the API to reconnect")
    finals = [wait_for_status(client, prediction_id, TERMINAL, timeout=120)["status"] for prediction_id in accepted]
    assert finals == ["succeeded"] * 3


def test_a_redis_that_stops_answering_is_a_503(stack, tmp_path):
    """A paused (or unreachable) Redis: a request waits out two tries' socket timeouts (20 s; the tries are
    counted in tests/shared/test_redis_retry.py) and is a 503 naming Redis. It was a 500, after 40 s (160 s
    for the next request)."""
    with (
        RedisServer(tmp_path, appendonly=False) as private,
        extra_api(stack, {"KILN_REDIS_URL": private.url}, "api-paused-redis") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120) as api,
    ):
        assert api.get("/v1/predictions").status_code == 200
        with paused(private.pid):
            listed = api.get("/v1/predictions")
        assert_problem(listed, 503, "the prediction store (Redis) is unavailable")
        assert listed.headers["retry-after"] == "5"
        assert api.get("/v1/predictions").status_code == 200


def test_storage_outage_fails_the_prediction_clearly_and_the_worker_keeps_serving(stack, client):
    # Small enough to stay inline in the record (KILN_INLINE_INPUT_MAX_BYTES): submitting it needs no S3.
    inline_image = png_uri(gradient(64, 64, horizontal=True))
    stack.s3.stop()
    try:
        assert client.get("/health").status_code == 503
        # A larger image is stored with the prediction at submission: without S3, a clear 503.
        stored_image = client.post("/v1/predictions", json={"version": SD2_MODEL, "input": depth2img_input()})
        assert_problem(stored_image, 503, "object storage (S3) is unavailable")
        done = wait_for_status(client, create(client, input_image=inline_image)["id"], TERMINAL, timeout=120)
    finally:
        stack.s3.start()
    assert done["status"] == "failed"
    assert done["error"].startswith("could not store the outputs (object storage unavailable)")
    assert wait_for_status(client, create(client)["id"], TERMINAL)["status"] == "succeeded"


def test_health_answers_while_s3_stops_answering(stack, client):
    """A readiness probe's question gets a quick answer from a stalled S3 (paused, a partition): it waited out
    the transfers' client, four tries of a 30 s read timeout (120 s)."""
    with paused(stack.s3.pid):
        answered = client.get("/health", timeout=30)
    assert answered.status_code == 503
    assert answered.json()["checks"]["redis"] == "ok"
    assert answered.json()["checks"]["s3"].startswith("unavailable: ")
    wait_until(lambda: client.get("/health").status_code == 200, 30, what="S3 to answer again")


WAITING_ON_S3 = 45  # more requests than the 40 threads synchronous reads run on


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_requests_waiting_on_a_stalled_s3_never_hold_another_tokens_reads(stack, client, other_client, method):
    """Downloads (GET of an output) and deletes (DELETE of a prediction's data) wait for S3 on lanes of their
    own, a share per owner (``api.lanes``): 45 of them waiting on a stalled S3 held every thread of the
    pool reads run on, and another token's ``GET /v1/predictions`` waited for the S3 client to give up (a
    minute or two)."""
    done = wait_for_status(client, create(client)["id"], TERMINAL)
    url = done["output"][0].split("?")[0] if method == "GET" else done["urls"]["get"]
    answered_a: list[tuple[int, float]] = []

    def request() -> None:
        with stack.client(TOKEN_A) as a:
            status = a.request(method, url, timeout=180).status_code
        answered_a.append((status, time.monotonic()))

    threads = [threading.Thread(target=request, daemon=True) for _ in range(WAITING_ON_S3)]
    with paused(stack.s3.pid):
        for thread in threads:
            thread.start()
        wait_until(lambda: requests_waiting_at(stack.s3.s3_port) >= 8, 30, what="A's requests to wait on S3")
        time.sleep(1)  # and the rest of them reach the API
        for _ in range(10):
            assert other_client.get("/v1/predictions", timeout=30).status_code == 200
        b_done = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answered_a) == WAITING_ON_S3
    assert b_done < min(at for _, at in answered_a), "a request of A's was answered before B's reads"
    # Once S3 answers again, A's requests are served: those still waiting, and any that gave up (503).
    assert {status for status, _ in answered_a} <= {200, 503}
    if method == "GET":
        assert client.get(url).status_code == 200
    else:
        assert client.get(url).json()["data_removed"] is True


def test_retention_removes_inputs_and_outputs(stack, client):
    done = wait_for_status(client, create(client)["id"], TERMINAL)
    settings = stack.settings()
    janitor = Janitor(redis.Redis.from_url(stack.redis_url), Storage(settings))
    # Bring the prediction's retention deadline forward instead of waiting an hour.
    janitor.redis.zadd("kiln:retention", {f"prediction:{done['id']}": time.time() - 1})
    janitor.run_once()  # or the stack's own janitor claims it first: wait for the outcome either way
    removed = wait_until(
        lambda: (body := client.get(f"/v1/predictions/{done['id']}").json())["data_removed"] and body,
        60,
        what="retention",
    )
    assert (removed["data_removed"], removed["output"]) == (True, None)
    assert client.get(done["output"][0].split("?")[0]).status_code == 410
    assert client.get(done["output"][0]).status_code == 410


def _image() -> str:
    return data_uri(png_bytes(64, 64))
