"""Long requests cost no shared connections: every ``Prefer: wait`` and stream of an API
process waits on its one pub/sub connection; a token has at most ``KILN_MAX_OPEN_STREAMS_PER_TENANT``
(20) open at once, across API processes (429 beyond); a stored create never answers 5xx."""

from __future__ import annotations

import json
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support import assert_problem, wait_for_status, wait_until
from tests.support.predictions import TERMINAL, app_for, depth2img_input, xl_input
from tests.support.step_gates import StepGate
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
CAP = 20  # KILN_MAX_OPEN_STREAMS_PER_TENANT's default; the stack does not change it
SD2 = {"version": "kiln/sd2-depth2img", "input": depth2img_input(width=64, height=64)}


def pubsub_connections(redis_url: str) -> int:
    with Redis.from_url(redis_url) as client:
        return len(client.client_list(_type="pubsub"))


@contextmanager
def open_streams(base_url: str, token: str, prediction_id: str, count: int) -> Iterator[list[int]]:
    """``count`` SSE streams held open for the block (each has read its first event); their statuses."""
    statuses: list[int] = []
    # Kept until the end: httpx closes a response once its line iterator is dropped.
    readers: list[Iterator[str]] = []
    with ExitStack() as held:
        for _ in range(count):
            client = held.enter_context(client_for(base_url, token, timeout=httpx.Timeout(30, read=120)))
            response = held.enter_context(client.stream("GET", f"/v1/predictions/{prediction_id}/stream"))
            statuses.append(response.status_code)
            if response.status_code == 200:
                readers.append(response.iter_lines())
                next(readers[-1])  # the stream is open and serving
        yield statuses


def latencies_ms(client: httpx.Client, path: str, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.get(path).status_code == 200
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_a_token_at_its_stream_cap_gets_429_while_another_tokens_waited_create_succeeds(stack):
    _, token_a = new_token(stack.redis_url, "streamer")
    _, token_b = new_token(stack.redis_url, "waiter")
    tls = ssl.create_default_context(cafile=str(stack.tls_ca))
    with (
        StepGate(stack.redis_url) as gate,
        client_for(stack.base_url, token_a) as a,
        client_for(stack.base_url, token_b) as b,
    ):
        # A's prediction runs (on the XL worker) until the gate opens; B's run on the sd2 worker.
        held = a.post(
            "/v1/models/kiln/ip-adapter-depth-xl/predictions",
            json={"input": xl_input(prompt=gate.prompt, num_inference_steps=100)},
        ).json()
        wait_for_status(a, held["id"], {"processing"}, timeout=180)
        b_done = b.post("/v1/predictions", json=SD2, headers={"Prefer": "wait=60"}).json()
        baseline = latencies_ms(b, f"/v1/predictions/{b_done['id']}", 200)
        connections_before = pubsub_connections(stack.redis_url)

        with open_streams(stack.base_url, token_a, held["id"], CAP) as statuses:
            assert statuses == [200] * CAP
            # The streams share each API process's one pub/sub connection.
            assert pubsub_connections(stack.redis_url) == connections_before
            # At the cap, in this API process and the other one, streams and waits are refused...
            assert_problem(a.get(f"/v1/predictions/{held['id']}/stream"), 429, "KILN_MAX_OPEN_STREAMS_PER_TENANT")
            with client_for(stack.tls_base_url, token_a, verify=tls) as a_elsewhere:
                refused = a_elsewhere.get(f"/v1/predictions/{held['id']}/stream")
                assert_problem(refused, 429, f"{CAP} streams")
                assert int(refused.headers["retry-after"]) >= 1
            count_before = len(all_ids(a))
            waited = a.post("/v1/predictions", json=SD2, headers={"Prefer": "wait=5"})
            assert_problem(waited, 429, "Prefer: wait")
            assert len(all_ids(a)) == count_before, "a refused waited create stored nothing"
            # ... while B's waited create runs to the end and B's reads stay fast.
            started = time.monotonic()
            created = b.post("/v1/predictions", json=SD2, headers={"Prefer": "wait=60"})
            waited_s = time.monotonic() - started
            assert created.status_code == 201 and created.json()["status"] == "succeeded", created.text
            loaded = latencies_ms(b, f"/v1/predictions/{created.json()['id']}", 200)
            print(
                f"\nB while A holds {CAP} streams: waited create {waited_s:.2f} s; GET p50 "
                f"{statistics.median(loaded):.1f} ms, p99 {p99(loaded):.1f} ms "
                f"(before: p50 {statistics.median(baseline):.1f} ms, p99 {p99(baseline):.1f} ms)"
            )
        # Closed streams free their slots at once.
        wait_until(lambda: stream_opens(a, held["id"]), 10, what="a slot to be free again once A's streams closed")
        gate.open()
        assert wait_for_status(a, held["id"], TERMINAL, timeout=180)["status"] in TERMINAL


def stream_opens(client: httpx.Client, prediction_id: str) -> bool:
    with client.stream("GET", f"/v1/predictions/{prediction_id}/stream") as response:
        return response.status_code == 200


def all_ids(client: httpx.Client) -> set[str]:
    ids, url = set(), "/v1/predictions"
    while url:
        page = client.get(url).json()
        ids |= {p["id"] for p in page["results"]}
        url = page["next"]
    return ids


def test_a_stream_sends_logs_status_output_and_done_and_waits_are_answered(stack, client):
    """What a stream sends over the event hub, in order, for a prediction that runs (with Kiln's
    ``status`` events, which the playground asks for)."""
    with StepGate(stack.redis_url) as gate:
        created = client.post(
            "/v1/predictions",
            json={
                "version": "kiln/sd2-depth2img",
                "input": depth2img_input(
                    prompt=gate.prompt, width=64, height=64, num_inference_steps=3, prompt_strength=1.0
                ),
            },
        ).json()
        events: list[tuple[str, str]] = []

        def read() -> None:
            stream = f"/v1/predictions/{created['id']}/stream?kiln_status=true"
            with client.stream("GET", stream, timeout=120) as response:
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        events.append((event, line.removeprefix("data: ")))

        reader = threading.Thread(target=read)
        reader.start()
        wait_for_status(client, created["id"], {"processing"})
        gate.open()
        reader.join(120)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and "output" in kinds and "logs" in kinds, kinds
    assert kinds.index("output") < kinds.index("done")
    # Each status event: the status and queue position (sent again as the position changes).
    statuses = [json.loads(data)["status"] for kind, data in events if kind == "status"]
    changes = [status for i, status in enumerate(statuses) if i == 0 or status != statuses[i - 1]]
    assert statuses[-1] == "succeeded" and changes == list(dict.fromkeys(changes)), statuses
    output_urls = [data for kind, data in events if kind == "output"]
    assert len(output_urls) == 1 and "expires=" in output_urls[0]


def test_a_stored_create_answers_201_as_stored_when_waiting_fails(stack, monkeypatch):
    """Redis failing while a create waits: the prediction was stored, so the answer is a 201 with
    it as stored (a client retrying a 5xx would run it twice), never a 5xx."""
    import api.intake.submission

    async def redis_gone(*args: object, **kwargs: object) -> bool:
        raise RedisConnectionError("Connection reset by peer (while waiting)")

    monkeypatch.setattr(api.intake.submission, "wait_until_terminal", redis_gone)
    _, token = new_token(stack.redis_url, "fragile")
    with app_for(stack) as app:
        response = app.post(
            "/v1/predictions", json=SD2, headers={"Authorization": f"Bearer {token}", "Prefer": "wait=5"}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "starting" and response.headers["location"].endswith(body["id"])
    with client_for(stack.base_url, token) as client:
        assert wait_for_status(client, body["id"], TERMINAL)["status"] == "succeeded"
