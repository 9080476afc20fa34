"""Celery task messages for ``kiln.predict``, rendered from a template Celery itself produced.

Building a message through ``send_task`` costs about as much as the rest of a create (protocol-2
headers, kombu's ``Message``, JSON and base64 in several passes, a binding lookup per publish).
Every predict message differs only in the prediction id, the task id and kombu's delivery tag, so
Kiln asks Celery once per (queue, priority) for a real message, sent to kombu's in-memory
transport with sentinel ids, keeps it as a template, and renders later messages by filling the
three slots. The rendered bytes are exactly what kombu's Redis transport would ``LPUSH``
(``tests/shared/test_task_messages.py`` compares them with a message published through kombu), so
they can go into the same Redis transaction that stores the prediction records: one round trip
stores and enqueues a whole batch.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.utils.json import dumps as kombu_dumps

from shared.scheduling import queues

# Stand-ins Celery carries through untouched; none can occur in a real message.
_TASK_ID = "kiln-template-task-id-0000000000000"
_PREDICTION_ID = "kiln-template-prediction-id-000000"


@dataclass(frozen=True)
class Template:
    # The list kombu's Redis transport keeps this queue's priority step in.
    list_key: str
    # Literal text around the slots: parts[0] slots[0] parts[1] ... slots[-1] parts[-1].
    parts: tuple[str, ...]
    slots: tuple[str, ...]
    # The task body (JSON ``[args, kwargs, embed]``) around the prediction id, before base64.
    body_prefix: bytes
    body_suffix: bytes

    def render(self, prediction_id: str) -> str:
        values = {
            "task_id": str(uuid.uuid4()),
            "prediction_id": prediction_id,
            "body": base64.b64encode(self.body_prefix + prediction_id.encode() + self.body_suffix).decode(),
            "delivery_tag": str(uuid.uuid4()),
        }
        out = [self.parts[0]]
        for slot, literal in zip(self.slots, self.parts[1:], strict=True):
            out += (values[slot], literal)
        return "".join(out)


def priority_step(priority: int) -> int:
    """The step kombu files a message of ``priority`` under (it rounds down to a step)."""
    return max(step for step in queues.PRIORITY_STEPS if step <= priority)


class PredictMessages:
    """Templates per (queue, priority), built on first use from the app's own configuration."""

    def __init__(self, celery: Celery) -> None:
        self._conf = dict(celery.conf.items())
        self._templates: dict[tuple[str, int], Template] = {}
        self._lock = threading.Lock()

    def render(self, prediction_id: str, queue: str, priority: int) -> tuple[str, str]:
        """``(redis list, message)`` for one prediction."""
        template = self._templates.get((queue, priority)) or self._build(queue, priority)
        return template.list_key, template.render(prediction_id)

    def _build(self, queue: str, priority: int) -> Template:
        with self._lock:
            if (queue, priority) not in self._templates:
                self._templates[(queue, priority)] = self._capture(queue, priority)
            return self._templates[(queue, priority)]

    def _capture(self, queue: str, priority: int) -> Template:
        probe = Celery("kiln-template", broker="memory://", set_as_current=False)
        probe.conf.update({k: v for k, v in self._conf.items() if not k.startswith("broker")})
        probe.conf.broker_url = "memory://"
        probe.send_task(queues.PREDICT_TASK, args=[_PREDICTION_ID], task_id=_TASK_ID, queue=queue, priority=priority)
        with probe.connection_for_write() as connection:
            message = connection.default_channel._get(queue)
        return _template_of(message, queues.priority_lists(queue)[priority_step(priority)])


def _template_of(message: dict[str, Any], list_key: str) -> Template:
    properties = message["properties"]
    if properties.get("body_encoding") != "base64":
        raise RuntimeError(f"unexpected kombu body encoding {properties.get('body_encoding')!r}")
    body = base64.b64decode(message["body"])
    prefix, found, suffix = body.partition(_PREDICTION_ID.encode())
    if not found or _PREDICTION_ID.encode() in suffix:
        raise RuntimeError("the task body does not hold the prediction id exactly once")
    marks = {
        _TASK_ID: "task_id",
        _PREDICTION_ID: "prediction_id",
        message["body"]: "body",
        properties["delivery_tag"]: "delivery_tag",
    }
    # kombu.utils.json.dumps has no annotations.
    serialized: str = kombu_dumps(message)  # type: ignore[no-untyped-call]
    pieces = re.split("(" + "|".join(re.escape(mark) for mark in marks) + ")", serialized)
    parts, slots = tuple(pieces[::2]), tuple(marks[mark] for mark in pieces[1::2])
    if {"task_id", "body", "delivery_tag"} - set(slots):
        raise RuntimeError(f"unexpected Celery message layout: slots {slots}")
    return Template(list_key, parts, slots, prefix, suffix)
