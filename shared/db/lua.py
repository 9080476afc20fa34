"""Kiln's Redis Lua scripts: one file each in ``shared/db/lua/``, rendered whole by ``script(name)``.

Every script is registered by ``register(client, NAME)``, which takes its text from ``script``.
``python -m shared.db.lua NAME`` (or ``kiln lua NAME``) prints a script exactly
as Redis runs it; without a name, the names.

A file is rendered by three rules, and nothing else:

- A line ``-- include: NAME`` is followed by the rendered ``NAME.lua``: a prelude of constants and
  local functions several scripts share (``set_status``, ``status_table``, ...). A script takes each
  prelude once, where it is first included; a later include of the same prelude (a prelude's own
  include of one the script already has) adds nothing.
- ``{{NAME}}`` is replaced by ``placeholders()[NAME]``, Lua rendered from Python: the state table
  of ``shared.predictions.status``, the batch statuses of ``shared.batches.counts`` and the queue
  lines of ``shared.scheduling.queues``.
- ``{{keys.BUILDER(expr, ...)}}`` is replaced by the Lua expression for the key that
  ``shared.db.keys.BUILDER`` makes of the Lua expressions given (``lua_key``): a script builds the
  keys of ids it reads from the one place keys are spelled. ``{{keys.prediction(id)}}`` renders as
  ``'kiln:prediction:' .. id``.

A placeholder of any other name is an error, so a rendered script has none left.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import overload

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from shared.batches.counts import COMPLETED, QUEUED, VALIDATING
from shared.db import keys
from shared.db.client import register_script
from shared.predictions.status import ALLOWED_SOURCES, TERMINAL, Status
from shared.scheduling import queues

SCRIPTS = Path(__file__).with_name("lua")

_INCLUDE = re.compile(r"^-- include: (\w+)\n", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(?:keys\.(\w+)\(([^)]*)\)|(\w+))\}\}")


def lua_key(builder: Callable[..., str], *lua_args: str) -> str:
    """A Lua expression for the key ``builder`` (a ``shared.db.keys`` function) makes, its arguments
    the Lua expressions ``lua_args``: ``lua_key(keys.prediction, "id")`` is ``'kiln:prediction:' .. id``."""
    hole = "\x00"
    parts = builder(*[hole] * len(lua_args)).split(hole)
    pieces = [f"'{parts[0]}'"]
    for arg, part in zip(lua_args, parts[1:], strict=True):
        pieces += [arg, f"'{part}'"]
    return " .. ".join(piece for piece in pieces if piece != "''")


def _lua_set(statuses: Sequence[Status]) -> str:
    return "{" + ", ".join(f"[{status.name}] = true" for status in statuses) + "}"


def placeholders(allowed_sources: Mapping[Status, frozenset[Status]] = ALLOWED_SOURCES) -> dict[str, str]:
    """The ``{{NAME}}`` values: ``STATUS_NAMES`` and ``STATUS_VALUES`` (a Lua constant per status),
    ``ENTERED_FROM`` (``allowed_sources`` as a Lua table), ``TERMINAL``, the batch statuses, and the
    queue lines: ``QUEUE_ROUND_ROBIN_LINES`` (a Lua set) and ``QUEUE_REQUEUE_LINE``."""
    return {
        "STATUS_NAMES": ", ".join(status.name for status in Status),
        "STATUS_VALUES": ", ".join(f"'{status.value}'" for status in Status),
        "ENTERED_FROM": "{"
        + ", ".join(
            f"[{target.name}] = {_lua_set([source for source in Status if source in sources])}"
            for target, sources in allowed_sources.items()
        )
        + "}",
        "TERMINAL": _lua_set(sorted(TERMINAL)),
        "BATCH_VALIDATING": f"'{VALIDATING}'",
        "BATCH_QUEUED": f"'{QUEUED}'",
        "BATCH_COMPLETED": f"'{COMPLETED}'",
        "QUEUE_ROUND_ROBIN_LINES": "{" + ", ".join(f"['{step}'] = true" for step in queues.ROUND_ROBIN_STEPS) + "}",
        "QUEUE_REQUEUE_LINE": f"'{queues.PRIORITY_REQUEUE}'",
    }


def names() -> list[str]:
    """Every script and prelude, by name (its file's, without ``.lua``)."""
    return sorted(path.stem for path in SCRIPTS.glob("*.lua"))


def _expand(name: str, included: set[str]) -> str:
    """``name``'s text with its includes expanded, leaving out the preludes in ``included``."""
    included.add(name)

    def include(match: re.Match[str]) -> str:
        return match[0] if match[1] in included else match[0] + _expand(match[1], included)

    return _INCLUDE.sub(include, (SCRIPTS / f"{name}.lua").read_text())


def render(name: str, values: Mapping[str, str]) -> str:
    """Script ``name`` with its includes expanded and its placeholders filled from ``values``."""

    def fill(match: re.Match[str]) -> str:
        builder, lua_args, placeholder = match.groups()
        if builder:
            return lua_key(getattr(keys, builder), *(arg.strip() for arg in lua_args.split(",") if arg.strip()))
        if placeholder not in values:
            raise KeyError(f"{name}.lua: no value for {match[0]}")
        return values[placeholder]

    return _PLACEHOLDER.sub(fill, _expand(name, set()))


@cache
def script(name: str) -> str:
    """Script ``name``, complete, as Redis runs it."""
    return render(name, placeholders())


@overload
def register(client: redis.asyncio.Redis, name: str) -> AsyncScript: ...
@overload
def register(client: redis.Redis, name: str) -> Script: ...
def register(client: redis.Redis | redis.asyncio.Redis, name: str) -> Script | AsyncScript:
    """Script ``name`` registered on ``client``: run by EVALSHA, and by EVAL where the server has forgotten
    it (``shared.db.client.register_script``)."""
    return register_script(client, script(name))


def show(name: str | None) -> str:
    """What the command prints: script ``name``, or the names one a line."""
    return script(name) if name else "".join(f"{found}\n" for found in names())


def add_name_argument(parser: argparse.ArgumentParser) -> None:
    """The command's argument: a script's name, optional."""
    parser.add_argument("name", nargs="?", choices=names(), help="the script to print (without it: the names)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.db.lua", description="Print a Redis Lua script of Kiln.")
    add_name_argument(parser)
    sys.stdout.write(show(parser.parse_args(argv).name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
