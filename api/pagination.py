"""Cursor pages as Replicate's lists answer them: ``{next, previous, results}`` with absolute URLs.

A cursor is opaque to clients: ``before:<id>`` or ``after:<id>`` in URL-safe base64, where ids are
ULIDs (``shared.predictions.record.new_id``) that sort by creation time. Filters travel in the page links
beside the cursor, so following ``next`` keeps them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import Query

from api.errors import ProblemError

# What a cursor this API returns looks like (documented in the OpenAPI document).
MAX_CURSOR_CHARS = 200
CURSOR_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_CURSOR_CHARS}}}$"

# What a cursor this API returns decodes to: ``<direction>:<bound>``, the bound an id or an offset.
_CURSOR_TEXT = re.compile(r"(?P<direction>[a-z]{1,16}):(?P<bound>[A-Za-z0-9]{1,64})")

Direction = Literal["before", "after"]
# The ``cursor`` query parameter. The pattern is documented only: any other value is a 400 naming it.
CursorQuery = Annotated[
    str | None,
    Query(description="From a page's next or previous link.", json_schema_extra={"pattern": CURSOR_PATTERN}),
]


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: ids older than ``bound`` ("before", the default: newest first) or newer."""

    direction: Direction = "before"
    bound: str | None = None

    @classmethod
    def decode(cls, cursor: str | None) -> Cursor:
        if not cursor:
            return cls()
        direction, bound = split_cursor(cursor, {"before", "after"})
        return cls("before" if direction == "before" else "after", bound)

    @staticmethod
    def encode(direction: Direction, bound: str) -> str:
        return base64.urlsafe_b64encode(f"{direction}:{bound}".encode()).decode().rstrip("=")


def split_cursor(cursor: str, directions: Collection[str]) -> tuple[str, str]:
    """A cursor's direction (one of ``directions``) and bound (ASCII letters and digits), or a 400
    naming ``cursor`` for anything this API could not have returned."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ProblemError(400, f"cursor: longer than {MAX_CURSOR_CHARS} characters, not a cursor this API returned")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):  # not base64 (non-ASCII included), or not UTF-8 inside
        text = ""
    found = _CURSOR_TEXT.fullmatch(text)
    if found is None or found["direction"] not in directions:
        raise ProblemError(400, "cursor: not a cursor this API returned")
    return found["direction"], found["bound"]


def page_links(
    list_url: str, filters: dict[str, str], older_than: str | None, newer_than: str | None
) -> dict[str, str | None]:
    """``next`` (older items, after ``older_than``) and ``previous`` (newer, after ``newer_than``), each
    with the filters; None where there is no such page."""

    def link(direction: Direction, bound: str | None) -> str | None:
        if bound is None:
            return None
        return f"{list_url}?{urlencode(filters | {'cursor': Cursor.encode(direction, bound)})}"

    return {"next": link("before", older_than), "previous": link("after", newer_than)}
