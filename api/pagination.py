"""Cursor pages as Replicate's lists answer them: ``{next, previous, results}`` with absolute URLs.

A cursor is opaque to clients: ``<direction>:<bound>`` in unpadded URL-safe base64. Lists of records
newest first take ``before:<id>`` or ``after:<id>``, where ids are ULIDs
(``shared.predictions.record.new_id``) that sort by creation time; a batch's predictions, in
submission order, take ``offset:<n>``. Filters travel in the page links beside the cursor, so
following ``next`` keeps them.
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
# Offsets in offset cursors: far more items than a batch can hold, well inside Redis's list indexes.
MAX_OFFSET_DIGITS = 15

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

    @property
    def before(self) -> str | None:
        """The id the page's items are older than, if it pages that way."""
        return self.bound if self.direction == "before" else None

    @property
    def after(self) -> str | None:
        """The id the page's items are newer than, if it pages that way."""
        return self.bound if self.direction == "after" else None


def encode_cursor(direction: str, bound: str) -> str:
    """The cursor of ``direction`` from ``bound``, as page links carry it."""
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
        return f"{list_url}?{urlencode(filters | {'cursor': encode_cursor(direction, bound)})}"

    return {"next": link("before", older_than), "previous": link("after", newer_than)}


def id_page_links(list_url: str, at: Cursor, ids: list[str], more: bool) -> dict[str, str | None]:
    """``page_links`` (no filters) of a page of ``ids``, newest first, read from ``at``; ``more``: the
    store holds items beyond the page in the direction it was read."""
    if at.direction == "before":
        older, newer = more, at.bound is not None
    else:
        older, newer = True, more
    return page_links(list_url, {}, ids[-1] if ids and older else None, ids[0] if ids and newer else None)


def decode_offset(cursor: str | None) -> int:
    """The item offset an ``offset:<n>`` cursor names, 0 without a cursor; a 400 naming ``cursor`` for
    anything else, offsets beyond any batch included."""
    if cursor is None:
        return 0
    _, offset = split_cursor(cursor, {"offset"})
    if not offset.isdigit() or len(offset) > MAX_OFFSET_DIGITS:
        raise ProblemError(400, "cursor: not a cursor this API returned")
    return int(offset)


def offset_page_links(list_url: str, start: int, size: int, more: bool) -> dict[str, str | None]:
    """``next`` (the ``size`` items from ``start + size``, when there are ``more``) and ``previous``
    (the page before ``start``; None at the first item)."""

    def link(offset: int) -> str:
        return f"{list_url}?{urlencode({'cursor': encode_cursor('offset', str(offset))})}"

    return {"next": link(start + size) if more else None, "previous": link(max(0, start - size)) if start else None}
