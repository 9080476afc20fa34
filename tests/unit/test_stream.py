"""The Server-Sent Events stream of a prediction, without servers: fakeredis holds the record and
carries its event channel to the process's event hub."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import fakeredis

from api.events import EventHub
from api.streaming import StreamContext, prediction_events
from shared import keys
from shared.prediction import Prediction
from shared.signed_urls import UrlSigner
from shared.store import PredictionStore


async def _stream_until_the_record_vanishes() -> list[str]:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    store = PredictionStore(redis)
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
    store.create(prediction)
    hub = EventHub(fakeredis.FakeAsyncRedis(server=server))
    await hub.start()
    context = StreamContext(
        fakeredis.FakeAsyncRedis(server=server), hub, UrlSigner("secret", 3600), 3600, "http://kiln"
    )
    try:
        stream = prediction_events(context, prediction.id)
        sent = [(await anext(stream)).event]
        # Redis lost the record while the stream was open (a restart that dropped the last writes).
        redis.delete(keys.prediction(prediction.id))
        redis.publish(keys.prediction_events(prediction.id), '{"status": "processing"}')
        sent += [event.event async for event in stream]
    finally:
        await hub.close()
    return [event for event in sent if event is not None]


def test_a_stream_whose_prediction_vanishes_ends_instead_of_failing():
    # In a thread of its own: the browser tests' session fixture (playwright's sync API) keeps an
    # event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, asyncio.wait_for(_stream_until_the_record_vanishes(), timeout=10)).result()
    assert sent == ["status"]
