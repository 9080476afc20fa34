"""A prediction's Server-Sent Events, as Replicate sends them: ``output``, ``logs``, ``error``, ``done``.

- every event has an ``id:`` naming the position the stream reached, ``<log bytes>-<outputs>``
  (``-error``/``-done`` appended on the last two) and a tag, ``.<HMAC>``, that binds it to the
  prediction, so a client that reconnects with ``Last-Event-ID`` gets only what comes after it, and
  an id this server never sent for this prediction (another prediction's, or a made-up position
  that would resume mid-line) is refused;
- ``logs`` carries one log line, ``output`` one output URL as plain text (each new output file its
  own event), ``error`` the error message, and ``done`` ``{}`` or ``{"reason": "canceled"|"error"}``;
- ``status`` events (``{"status": ..., "queue_position": ...}``, each time either changes; the position
  of a queued prediction is re-read every ``QUEUED_RECHECK_S``, as others start) are a Kiln-only
  extension the playground asks for (``?kiln_status=true``); Replicate's clients reject unknown events,
  so they are never in the default stream.

The stream waits on the process's event hub (``api.streams.events``), holds no Redis connection, and on
each change reads only what it sends: a few fields of the record and the log bytes it has not sent.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio
from fastapi.sse import ServerSentEvent

from api.streams.events import RECHECK_S, EventHub
from shared.db import keys
from shared.predictions.client_json import render_outputs
from shared.predictions.status import Status
from shared.scheduling.queue_lines import Ticket, queue_position
from shared.security.signed_urls import UrlSigner

# A stream ends after this long even if the prediction is still running; clients reconnect.
STREAM_MAX_S = 30 * 60
# A queued prediction's status stream re-reads its queue position this often (others starting send
# it no event of its own).
QUEUED_RECHECK_S = 1.0
_FIELDS = ("status", "output", "error", "completed_at", "data_removed", "queue", "tenant", "queue_line", "queue_ticket")
# What a stream sent before, as its event ids name it: log bytes, outputs, an optional suffix, the tag.
EVENT_ID = re.compile(
    r"(?P<position>(?P<log_bytes>[0-9]{1,15})-(?P<outputs>[0-9]{1,6})(?:-(?:error|done))?)\.(?P<tag>[A-Za-z0-9_-]{16})"
)


class BadEventId(ValueError):
    """A ``Last-Event-ID`` this API did not send."""


@dataclass(frozen=True)
class Position:
    """How far a stream got: log bytes sent (whole lines only) and output URLs sent."""

    log_bytes: int = 0
    outputs: int = 0


@dataclass(frozen=True)
class EventIds:
    """One prediction's event ids: each names a position and carries an HMAC of it and the prediction
    id under the server's URL-signing secret, so only ids this server sent for this prediction resume."""

    secret: str
    prediction_id: str

    def event_id(self, position: Position, suffix: str = "") -> str:
        text = f"{position.log_bytes}-{position.outputs}{suffix}"
        return f"{text}.{self._tag(text)}"

    def resume_after(self, event_id: str | None) -> Position:
        """Where a stream resumes after ``Last-Event-ID`` (the start, without one)."""
        if event_id is None or not event_id.strip():
            return Position()
        found = EVENT_ID.fullmatch(event_id.strip())
        if found is None or not hmac.compare_digest(found["tag"], self._tag(found["position"])):
            raise BadEventId(
                f"Last-Event-ID: {event_id[:60]!r} is not an event id this API sent for prediction "
                f"{self.prediction_id!r}; reconnect without it to start over"
            )
        return Position(int(found["log_bytes"]), int(found["outputs"]))

    def _tag(self, position_text: str) -> str:
        message = f"stream-event:{self.prediction_id}:{position_text}".encode()
        digest = hmac.digest(self.secret.encode(), message, "sha256")
        return base64.urlsafe_b64encode(digest[:12]).decode()


@dataclass
class StreamState:
    """What the stream has sent so far."""

    ids: EventIds
    log_bytes: int = 0
    outputs_sent: int = 0
    status: Status | None = None
    # Kiln's extension: also send ``status`` events, with the queue position.
    with_status: bool = False
    queue_position: int | None = None
    pending: list[ServerSentEvent] = field(default_factory=list)

    def event_id(self, suffix: str = "") -> str:
        return self.ids.event_id(Position(self.log_bytes, self.outputs_sent), suffix)


@dataclass(frozen=True)
class StreamContext:
    client: redis.asyncio.Redis
    hub: EventHub
    signer: UrlSigner
    retention_s: float
    base_url: str


async def prediction_events(
    context: StreamContext, prediction_id: str, start: Position | None = None, *, with_status: bool = False
) -> AsyncIterator[ServerSentEvent]:
    """The prediction's events from ``start`` (after a ``Last-Event-ID``, ``EventIds.resume_after``)
    until ``done``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    start = start or Position()
    state = StreamState(
        EventIds(context.signer.secret, prediction_id),
        log_bytes=start.log_bytes,
        outputs_sent=start.outputs,
        with_status=with_status,
    )
    async with context.hub.subscribe(prediction_id) as subscription:
        while True:
            finished = await _read_changes(context, prediction_id, state)
            for event in state.pending:
                yield event
            state.pending.clear()
            remaining = deadline - loop.time()
            if finished or remaining <= 0:
                return
            queued = state.with_status and state.status is Status.STARTING
            await subscription.wait(min(remaining, QUEUED_RECHECK_S if queued else RECHECK_S))


async def _read_changes(context: StreamContext, prediction_id: str, state: StreamState) -> bool:
    """Queue the events for what changed since the last read; True once the prediction is terminal."""
    async with context.client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.prediction(prediction_id), list(_FIELDS))
        pipe.getrange(keys.prediction_logs(prediction_id), state.log_bytes, -1)
        values, new_logs = await pipe.execute()
    if values[0] is None:
        return True  # removed (record retention): nothing more will come
    record = {
        name: json.loads(value) if value is not None else None for name, value in zip(_FIELDS, values, strict=True)
    }
    _queue_logs(state, new_logs)
    status = Status(str(record["status"]))
    if state.with_status:
        position = await _queue_position(context, record, status)
        if (status, position) != (state.status, state.queue_position):
            data = {"status": status.value, "queue_position": position}
            state.pending.append(ServerSentEvent(event="status", data=data, id=state.event_id()))
        state.queue_position = position
    state.status = status
    outputs = record["output"] if not record["data_removed"] else None
    if outputs and len(outputs) > state.outputs_sent:
        completed_at = datetime.fromisoformat(record["completed_at"]) if record["completed_at"] else None
        urls = render_outputs(
            context.base_url, prediction_id, outputs, completed_at, context.signer, context.retention_s
        )
        for url in urls[state.outputs_sent :]:
            state.outputs_sent += 1
            state.pending.append(ServerSentEvent(event="output", raw_data=url, id=state.event_id()))
    if not status.is_terminal():
        return False
    if record["error"]:
        message = str(record["error"]).replace("\r", " ").replace("\n", " ")
        state.pending.append(ServerSentEvent(event="error", raw_data=message, id=state.event_id("-error")))
    state.pending.append(ServerSentEvent(event="done", data=done_data(status), id=state.event_id("-done")))
    return True


async def _queue_position(context: StreamContext, record: dict[str, object], status: Status) -> int | None:
    """The queue position of a queued prediction (``shared.scheduling.queue_lines``); None otherwise."""
    family, tenant, line, ticket = (record[name] for name in ("queue", "tenant", "queue_line", "queue_ticket"))
    if status is not Status.STARTING or not family or not isinstance(line, int) or not isinstance(ticket, int):
        return None
    return await queue_position(context.client, Ticket(str(family), line, str(tenant), ticket))


def _queue_logs(state: StreamState, new_logs: bytes) -> None:
    """One ``logs`` event per whole line; a line still being written is sent once it ends."""
    complete = new_logs[: new_logs.rfind(b"\n") + 1]
    for line in complete.splitlines(keepends=True):
        state.log_bytes += len(line)
        text = line.decode(errors="replace").rstrip("\r\n").replace("\r", " ")
        state.pending.append(ServerSentEvent(event="logs", raw_data=text, id=state.event_id()))


def done_data(status: Status) -> dict[str, str]:
    """``done``'s data as Replicate sends it: ``{}`` when it succeeded, else the reason it stopped."""
    if status is Status.SUCCEEDED:
        return {}
    return {"reason": "error" if status is Status.FAILED else "canceled"}
