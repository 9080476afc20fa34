"""Server-Sent Events as a prediction's ``urls.stream`` sends them (the WHATWG event-stream format)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events in a stream's lines (line endings removed): fields until a blank line, comments
    (``: ping``) skipped, ``data`` lines joined with newlines."""
    name, data, event_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data or name != "message":
                yield Event(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
