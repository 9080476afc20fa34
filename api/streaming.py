"""A prediction's Server-Sent Events: ``status``, ``logs`` (one line each), ``output``, ``error``, ``done``.

The stream waits on the process's event hub (``api.events``), holds no Redis connection, and on
each change reads only what it sends: a few fields of the record and the log bytes it has not sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio
from fastapi.sse import ServerSentEvent

from api.events import RECHECK_S, EventHub
from shared import keys
from shared.prediction_json import render_outputs
from shared.signed_urls import UrlSigner
from shared.status import Status

# A stream ends after this long even if the prediction is still running; clients reconnect.
STREAM_MAX_S = 30 * 60
_FIELDS = ("status", "output", "error", "completed_at", "data_removed")


@dataclass
class StreamState:
    """What the stream has sent so far."""

    status: Status | None = None
    log_bytes: int = 0
    outputs: list[str] | None = None
    pending: list[ServerSentEvent] = field(default_factory=list)


@dataclass(frozen=True)
class StreamContext:
    client: redis.asyncio.Redis
    hub: EventHub
    signer: UrlSigner
    retention_s: float
    base_url: str


async def prediction_events(context: StreamContext, prediction_id: str) -> AsyncIterator[ServerSentEvent]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    state = StreamState()
    async with context.hub.subscribe(prediction_id) as subscription:
        while True:
            finished = await _read_changes(context, prediction_id, state)
            for event in state.pending:
                yield event
            state.pending.clear()
            remaining = deadline - loop.time()
            if finished or remaining <= 0:
                return
            await subscription.wait(min(remaining, RECHECK_S))


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
    # Whole lines only: a line still being written is sent once it ends.
    complete = new_logs[: new_logs.rfind(b"\n") + 1]
    state.log_bytes += len(complete)
    state.pending += [ServerSentEvent(event="logs", raw_data=line) for line in complete.decode().splitlines()]
    status = Status(str(record["status"]))
    if status is not state.status:
        state.status = status
        state.pending.append(ServerSentEvent(event="status", raw_data=status.value))
    outputs = record["output"] if not record["data_removed"] else None
    if outputs and outputs != state.outputs:
        state.outputs = outputs
        completed_at = datetime.fromisoformat(record["completed_at"]) if record["completed_at"] else None
        urls = render_outputs(
            context.base_url, prediction_id, outputs, completed_at, context.signer, context.retention_s
        )
        state.pending.append(ServerSentEvent(event="output", data=urls))
    if not status.is_terminal():
        return False
    if record["error"]:
        state.pending.append(ServerSentEvent(event="error", raw_data=str(record["error"]).replace("\n", " ")))
    reason = {} if status is Status.SUCCEEDED else {"reason": status.value}
    state.pending.append(ServerSentEvent(event="done", data=reason))
    return True
