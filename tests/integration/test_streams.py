"""Server-Sent Events as Replicate sends them, through the official Python client's ``stream``,
``prediction.stream`` and ``async_stream``, and over raw HTTP (signed URL without a token,
``Last-Event-ID``, the playground's ``status`` extension)."""

from __future__ import annotations

import asyncio
import json
import ssl
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
import replicate
from replicate.helpers import FileOutput

from tests.support import data_uri, png_bytes, wait_for_status
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
MODEL = "kiln/sd2-depth2img"
INPUT = {"prompt": "a kiln", "num_inference_steps": 4, "seed": 7, "input_image": data_uri(png_bytes(64, 64))}


def tls_client(stack) -> replicate.Client:
    transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(stack.tls_ca)))
    return replicate.Client(api_token=TOKEN_A, base_url=stack.tls_base_url, transport=transport)


def read_events(response: httpx.Response) -> list[dict[str, str]]:
    """The events of an SSE body, each as its fields (``event``, ``data``, ``id``)."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = (current[name] + "\n" if name in current else "") + value.removeprefix(" ")
    return events


def test_client_stream_yields_each_output_as_a_file(stack):
    rc = tls_client(stack)
    events = list(rc.stream(MODEL, input=INPUT | {"num_outputs": 2}))
    kinds = [event.event.value for event in events]
    assert kinds[-1] == "done" and kinds.count("output") == 2 and "logs" in kinds
    outputs = [event.data for event in events if event.event.value == "output"]
    assert all(isinstance(output, FileOutput) for output in outputs)
    assert all(output.read().startswith(b"\x89PNG") for output in outputs)
    assert all(event.id for event in events)


def test_prediction_stream_yields_the_output(stack):
    rc = tls_client(stack)
    prediction = rc.models.predictions.create(model=MODEL, input=INPUT)
    outputs = [event.data.url for event in prediction.stream() if event.event.value == "output"]
    prediction.reload()
    assert prediction.status == "succeeded"
    assert [urlsplit(url).path for url in outputs] == [urlsplit(url).path for url in prediction.output]


def test_async_stream_yields_the_output(stack):
    rc = replicate.Client(api_token=TOKEN_A, base_url=stack.base_url)

    async def stream() -> list[str]:
        events = [event async for event in await rc.async_stream(MODEL, input=INPUT)]
        assert events[-1].event.value == "done"
        return [event.data for event in events if event.event.value == "output"]

    # A thread of its own: the browser tests keep an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        outputs = pool.submit(asyncio.run, stream()).result(timeout=300)
    assert len(outputs) == 1 and "/output/out-0.png?" in outputs[0]


def test_the_signed_stream_url_works_without_a_token_and_resumes_after_last_event_id(stack, client):
    created = client.post("/v1/predictions", json={"version": MODEL, "input": INPUT}).json()
    wait_for_status(client, created["id"], {"succeeded"})
    stream_url = created["urls"]["stream"]
    assert "sig=" in stream_url and "expires=" in stream_url
    with httpx.Client(timeout=60) as anonymous:
        with anonymous.stream("GET", stream_url) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)
        assert {event["event"] for event in events} == {"logs", "output", "done"}
        assert all(event.get("id") for event in events)
        assert events[-1]["data"] == "{}"
        output = next(event for event in events if event["event"] == "output")
        assert output["data"].startswith("http") and "/output/out-0.png?" in output["data"]
        # Resumed after the output: only done comes again.
        with anonymous.stream("GET", stream_url, headers={"Last-Event-ID": output["id"]}) as response:
            assert [event["event"] for event in read_events(response)] == ["done"]
        refused = anonymous.get(stream_url, headers={"Last-Event-ID": "not-ours"})
        assert refused.status_code == 400 and "Last-Event-ID" in refused.json()["detail"]
        unsigned = anonymous.get(f"{stack.base_url}/v1/predictions/{created['id']}/stream")
        assert unsigned.status_code == 401
        forged = anonymous.get(stream_url.replace("sig=", "sig=x"))
        assert forged.status_code == 401


def test_last_event_id_resumes_only_after_an_id_sent_for_that_prediction(client):
    created = [client.post("/v1/predictions", json={"version": MODEL, "input": INPUT}).json() for _ in range(2)]
    first, second = (wait_for_status(client, c["id"], {"succeeded"}) for c in created)
    with httpx.Client(timeout=60) as anonymous:
        with anonymous.stream("GET", first["urls"]["stream"]) as response:
            sent = read_events(response)
        log_id = next(event["id"] for event in sent if event["event"] == "logs")
        with anonymous.stream("GET", first["urls"]["stream"], headers={"Last-Event-ID": log_id}) as response:
            assert response.status_code == 200 and read_events(response)[-1]["event"] == "done"
        # Another prediction's id, and a position this server never sent (mid-line): refused, not resumed.
        for foreign in (log_id, "29-0", log_id.replace("-", "0-", 1)):
            refused = anonymous.get(second["urls"]["stream"], headers={"Last-Event-ID": foreign})
            assert refused.status_code == 400, (foreign, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert "Last-Event-ID" in refused.json()["detail"]


def test_the_owners_token_opens_the_stream_and_status_events_are_opt_in(stack, client, other_client):
    created = client.post("/v1/predictions", json={"version": MODEL, "input": INPUT}).json()
    wait_for_status(client, created["id"], {"succeeded"})
    path = f"/v1/predictions/{created['id']}/stream"
    with client.stream("GET", path, params={"kiln_status": "true"}) as response:
        events = read_events(response)
    status = {"status": "succeeded", "queue_position": None}
    assert status in [json.loads(event["data"]) for event in events if event.get("event") == "status"]
    assert other_client.get(path).status_code == 404
