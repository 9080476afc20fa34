"""The Server-Sent Events stream of a prediction, without servers: fakeredis holds the record and
carries its event channel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import fakeredis

from api.routes.predictions import stream_prediction
from shared import keys
from shared.prediction import Prediction
from shared.store import PredictionStore


async def _stream_until_the_record_vanishes() -> list[str]:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    store = PredictionStore(redis)
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
    store.create(prediction)
    services = SimpleNamespace(
        store=store, event_redis=fakeredis.FakeAsyncRedis(server=server), url_signing_secret="secret"
    )
    stream = stream_prediction(prediction.id, prediction, services, "http://kiln")
    sent = [(await anext(stream)).event]
    # Redis lost the record while the stream was open (a restart that dropped the last writes).
    redis.delete(keys.prediction(prediction.id))
    redis.publish(keys.prediction_events(prediction.id), '{"status": "processing"}')
    sent += [event.event async for event in stream]
    return sent


def test_a_stream_whose_prediction_vanishes_ends_instead_of_failing():
    # In a thread of its own: the browser tests' session fixture (playwright's sync API) keeps an
    # event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, asyncio.wait_for(_stream_until_the_record_vanishes(), timeout=10)).result()
    assert sent == ["status"]
