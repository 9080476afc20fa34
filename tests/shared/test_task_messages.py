"""Predict messages rendered from Kiln's template are the messages kombu's Redis transport writes."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.runtime.celery_config import create_celery
from shared.scheduling import queues
from shared.scheduling.task_messages import PredictMessages, priority_step
from shared.settings import Settings

PREDICTION_ID = "01jd5s3q8k6v0n2x4z7b9c1e3g"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def published_by_celery(redis_url: str, queue: str, priority: int) -> dict:
    celery = create_celery(Settings(_env_file=None, redis_url=redis_url))
    celery.send_task(queues.PREDICT_TASK, args=[PREDICTION_ID], queue=queue, priority=priority)
    with redis.Redis.from_url(redis_url) as client:
        raw = client.rpop(queues.priority_lists(queue)[priority_step(priority)])
    assert raw is not None, "kombu put the message on another list than the template names"
    return json.loads(raw)


def normalised(message: dict) -> dict:
    """The message with its per-message ids (task id, delivery tag, process-bound reply queue) blanked."""
    message = json.loads(json.dumps(message))
    task_id = message["headers"]["id"]
    for where, name in (
        ("headers", "id"),
        ("headers", "root_id"),
        ("properties", "correlation_id"),
        ("properties", "delivery_tag"),
        ("properties", "reply_to"),
    ):
        message[where][name] = "<id>"
    assert task_id
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize(
    "queue,priority", [(queues.SD2_DEPTH, queues.PRIORITY_INTERACTIVE), (queues.SDXL, queues.PRIORITY_BATCH)]
)
def test_a_rendered_message_equals_what_kombu_publishes(redis_url, queue, priority):
    expected = published_by_celery(redis_url, queue, priority)
    messages = PredictMessages(create_celery(Settings(_env_file=None, redis_url=redis_url)))

    list_key, text = messages.render(PREDICTION_ID, queue, priority)

    assert list_key == queues.priority_lists(queue)[priority_step(priority)]
    assert normalised(json.loads(text)) == normalised(expected)
    assert normalised(expected)["body"][0] == [PREDICTION_ID]


def test_each_message_gets_its_own_task_id_and_delivery_tag(redis_url):
    messages = PredictMessages(create_celery(Settings(_env_file=None, redis_url=redis_url)))
    first = json.loads(messages.render("a" * 26, queues.SD2_DEPTH, 0)[1])
    second = json.loads(messages.render("b" * 26, queues.SD2_DEPTH, 0)[1])

    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["headers"]["id"] == first["headers"]["root_id"] == first["properties"]["correlation_id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert json.loads(base64.b64decode(second["body"]))[0] == ["b" * 26]
    assert second["headers"]["argsrepr"] == repr(["b" * 26])
