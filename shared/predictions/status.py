"""Prediction status and the transitions a status may take: the one state table.

``ALLOWED_SOURCES`` guards every status change. The Lua scripts that change a status atomically
(``shared/db/lua/``) do not spell out statuses of their own: they start with ``status_table.lua``,
which ``shared.db.lua`` renders from the enum and the table below.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # Its deadline (``Cancel-After``) passed before it started: it never ran.
    ABORTED = "aborted"

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.ABORTED})

# Where each status may be entered from. Terminal states have no way out, so a late or duplicate
# message can never move a finished or canceled prediction back.
ALLOWED_SOURCES: dict[Status, frozenset[Status]] = {
    # Back to the queue: a worker died (its lease lapsed) or shut down before finishing.
    Status.STARTING: frozenset({Status.PROCESSING}),
    Status.PROCESSING: frozenset({Status.STARTING}),
    Status.SUCCEEDED: frozenset({Status.PROCESSING}),
    Status.FAILED: frozenset({Status.STARTING, Status.PROCESSING}),
    Status.CANCELED: frozenset({Status.STARTING, Status.PROCESSING}),
    Status.ABORTED: frozenset({Status.STARTING}),
}
