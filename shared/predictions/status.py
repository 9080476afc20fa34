"""Prediction status and the transitions a status may take: the one state table.

``ALLOWED_SOURCES`` guards every status change. The Lua scripts that change a status atomically
(``shared.predictions.store``, ``shared.predictions.leases``) do not spell out statuses of their own: they start with
``LUA_STATUS_TABLE``, rendered from the enum and the table below.
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


def render_lua_status_table(allowed_sources: dict[Status, frozenset[Status]]) -> str:
    """Lua defining a constant per status (``STARTING = 'starting'``, ...) and ``may_enter(current,
    target)``, true exactly when ``allowed_sources`` lets a prediction move from ``current`` to ``target``."""
    names = ", ".join(status.name for status in Status)
    values = ", ".join(f"'{status.value}'" for status in Status)
    rows = ", ".join(
        f"[{target.name}] = {{{', '.join(f'[{source.name}] = true' for source in Status if source in sources)}}}"
        for target, sources in allowed_sources.items()
    )
    return f"""
local {names} = {values}
local ENTERED_FROM = {{{rows}}}
local function may_enter(current, target)
  local sources = ENTERED_FROM[target]
  return sources ~= nil and sources[current] == true
end
"""


# Prepended to every Lua script that changes a prediction's status.
LUA_STATUS_TABLE = render_lua_status_table(ALLOWED_SOURCES)
