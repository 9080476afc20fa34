"""An in-process record of when each prediction reached each stage, for benchmarks and tests.

Stages: ``claimed``, ``fetch`` (an image input read), ``prepared``, ``gpu_start`` / ``gpu_end`` (the
denoising call), ``uploaded``, ``finished``. Times are ``time.perf_counter()`` seconds, so their
order is the order things happened in this process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    stage: str
    prediction_id: str
    at: float
    thread: str


class Timeline:
    def __init__(self, capacity: int = 100_000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, stage: str, prediction_id: str) -> None:
        event = Event(stage, prediction_id, time.perf_counter(), threading.current_thread().name)
        with self._lock:
            self._events.append(event)

    def events(self, stage: str | None = None, prediction_id: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self._events
                if (stage is None or e.stage == stage) and (prediction_id is None or e.prediction_id == prediction_id)
            ]

    def first(self, stage: str, prediction_id: str) -> float:
        found = self.events(stage, prediction_id)
        if not found:
            raise LookupError(f"{prediction_id} never reached {stage}")
        return found[0].at

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


def gpu_idle_share(timeline: Timeline) -> tuple[float, float]:
    """``(idle seconds, idle share)`` between the first denoising call's start and the last one's end:
    the time no denoising call was running. The items of one batched call share its span."""
    ends = {e.prediction_id: e.at for e in timeline.events("gpu_end")}
    spans = sorted((e.at, ends[e.prediction_id]) for e in timeline.events("gpu_start") if e.prediction_id in ends)
    if not spans:
        return 0.0, 0.0
    idle, busy_until = 0.0, spans[0][0]
    for start, end in spans:
        idle += max(0.0, start - busy_until)
        busy_until = max(busy_until, end)
    total = busy_until - spans[0][0]
    return idle, idle / total if total > 0 else 0.0
