"""The Server-Sent Events stream of a prediction, without servers: fakeredis holds the record and
carries its event channel to the process's event hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import fakeredis
import pytest
from fastapi.sse import ServerSentEvent

from api.streams.events import EventHub
from api.streams.sse import BadEventId, EventIds, Position, StreamContext, done_data, prediction_events
from shared.db import keys
from shared.predictions.client_json import refresh_output_urls, render_prediction
from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.security.signed_urls import UrlSigner, Verdict
from tests.support import run_on_own_loop

SIGNER = UrlSigner("secret", 3600)


def _in_a_thread(coroutine: Callable[[], Coroutine[Any, Any, list[ServerSentEvent]]]) -> list[ServerSentEvent]:
    return run_on_own_loop(asyncio.wait_for(coroutine(), timeout=10))


class Fixture:
    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server)
        self.store = PredictionStore(self.redis)
        self.prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
        self.store.create(self.prediction)
        self.ids = EventIds(SIGNER.secret, self.prediction.id)

    def finish(self, status: Status, logs: str = "", **fields: object) -> None:
        self.store.transition(self.prediction.id, Status.PROCESSING)
        if logs:
            self.store.append_log(self.prediction.id, logs)
        self.store.transition(self.prediction.id, status, completed_at=utcnow(), **fields)

    async def events(self, start: Position | None = None, *, with_status: bool = False) -> list[ServerSentEvent]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=self.server))
        await hub.start()
        context = StreamContext(fakeredis.FakeAsyncRedis(server=self.server), hub, SIGNER, 3600, "http://kiln")
        try:
            return [
                event async for event in prediction_events(context, self.prediction.id, start, with_status=with_status)
            ]
        finally:
            await hub.close()


def test_a_finished_prediction_streams_logs_each_output_as_plain_text_then_done_with_ids():
    fixture = Fixture()
    fixture.finish(Status.SUCCEEDED, logs="step 1\nstep 2\n", output=["out-0.png", "out-1.png"])
    events = _in_a_thread(fixture.events)
    assert [e.event for e in events] == ["logs", "logs", "output", "output", "done"]
    assert [e.raw_data for e in events[:2]] == ["step 1", "step 2"]
    assert events[2].raw_data.startswith(f"http://kiln/v1/predictions/{fixture.prediction.id}/output/out-0.png?")
    assert events[3].raw_data.startswith(f"http://kiln/v1/predictions/{fixture.prediction.id}/output/out-1.png?")
    assert events[4].data == {}
    assert [e.id.split(".")[0] for e in events] == ["7-0", "14-0", "14-1", "14-2", "14-2-done"]
    assert [e.id for e in events] == [
        fixture.ids.event_id(Position(7, 0)),
        fixture.ids.event_id(Position(14, 0)),
        fixture.ids.event_id(Position(14, 1)),
        fixture.ids.event_id(Position(14, 2)),
        fixture.ids.event_id(Position(14, 2), "-done"),
    ]


def test_last_event_id_resumes_after_what_was_sent():
    fixture = Fixture()
    fixture.finish(Status.SUCCEEDED, logs="step 1\nstep 2\n", output=["out-0.png", "out-1.png"])
    sent = _in_a_thread(fixture.events)
    events = _in_a_thread(lambda: fixture.events(fixture.ids.resume_after(sent[2].id)))
    assert [(e.event, e.id) for e in events] == [("output", sent[3].id), ("done", sent[4].id)]
    assert "out-1.png" in events[0].raw_data


def test_a_failed_prediction_sends_its_error_then_done_with_the_reason():
    fixture = Fixture()
    fixture.finish(Status.FAILED, error="out of memory:\nCUDA")
    events = _in_a_thread(fixture.events)
    assert [(e.event, e.raw_data or e.data) for e in events] == [
        ("error", "out of memory: CUDA"),
        ("done", {"reason": "error"}),
    ]


def test_status_events_only_when_asked_for():
    fixture = Fixture()
    fixture.finish(Status.CANCELED)
    assert [e.event for e in _in_a_thread(fixture.events)] == ["done"]
    with_status = _in_a_thread(lambda: fixture.events(with_status=True))
    assert (with_status[0].event, with_status[0].data) == ("status", {"status": "canceled", "queue_position": None})
    assert with_status[-1].data == {"reason": "canceled"}


@pytest.mark.parametrize("event_id", ["abc", "1", "-1-2", "1-2-3", "9" * 20 + "-1", "29-0", "14-1", "14-1.x"])
def test_an_event_id_this_api_never_sent_is_refused(event_id):
    with pytest.raises(BadEventId, match="Last-Event-ID"):
        EventIds(SIGNER.secret, "p1").resume_after(event_id)


def test_an_event_id_sent_for_another_prediction_or_under_another_secret_is_refused():
    sent = EventIds(SIGNER.secret, "p1").event_id(Position(14, 1))
    assert EventIds(SIGNER.secret, "p1").resume_after(sent) == Position(14, 1)
    assert EventIds(SIGNER.secret, "p1").resume_after(" ") == Position()
    for other in (EventIds(SIGNER.secret, "p2"), EventIds("another-secret", "p1")):
        with pytest.raises(BadEventId, match="Last-Event-ID"):
            other.resume_after(sent)
    tampered = sent.replace("14-1.", "15-1.")
    with pytest.raises(BadEventId):
        EventIds(SIGNER.secret, "p1").resume_after(tampered)


def test_done_reasons_as_replicate_sends_them():
    assert done_data(Status.SUCCEEDED) == {}
    assert done_data(Status.FAILED) == {"reason": "error"}
    assert done_data(Status.CANCELED) == {"reason": "canceled"}


async def _stream_until_the_record_vanishes() -> list[ServerSentEvent]:
    fixture = Fixture()
    hub = EventHub(fakeredis.FakeAsyncRedis(server=fixture.server))
    await hub.start()
    context = StreamContext(fakeredis.FakeAsyncRedis(server=fixture.server), hub, SIGNER, 3600, "http://kiln")
    try:
        stream = prediction_events(context, fixture.prediction.id, with_status=True)
        sent = [await anext(stream)]
        # Redis lost the record while the stream was open (a restart that dropped the last writes).
        fixture.redis.delete(keys.prediction(fixture.prediction.id))
        fixture.redis.publish(keys.prediction_events(fixture.prediction.id), '{"status": "processing"}')
        sent += [event async for event in stream]
    finally:
        await hub.close()
    return sent


def test_a_stream_whose_prediction_vanishes_ends_instead_of_failing():
    sent = _in_a_thread(_stream_until_the_record_vanishes)
    assert [event.event for event in sent] == ["status"]


def test_urls_stream_is_signed_and_a_retried_webhook_body_gets_a_fresh_one():
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={})
    rendered = render_prediction(prediction, "http://kiln", SIGNER, 3600)
    parts = urlsplit(rendered["urls"]["stream"])
    query = dict(parse_qsl(parts.query))
    assert parts.path == f"/v1/predictions/{prediction.id}/stream"
    assert SIGNER.check(parts.path, expires=query["expires"], sig=query["sig"]) is Verdict.VALID
    later = UrlSigner("secret", 7200)  # signs with a later expiry, as a retry hours later would
    refreshed = json.loads(refresh_output_urls(json.dumps(rendered), later, 3600))
    fresh = dict(parse_qsl(urlsplit(refreshed["urls"]["stream"]).query))
    assert int(fresh["expires"]) > int(query["expires"])
    assert later.check(parts.path, expires=fresh["expires"], sig=fresh["sig"]) is Verdict.VALID
