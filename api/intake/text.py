"""Text that cannot be stored or sent: strings that are not valid Unicode.

JSON allows ``"\\ud800"`` (a lone surrogate escape) and Python's parser accepts it, but such a
string has no UTF-8 form: it breaks every encoder downstream (orjson, the response, Redis, S3
metadata). Inputs are checked once, as they arrive, so a 422 names the field instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InvalidText:
    """Where a bad string sits (path of keys and indexes) and what is wrong with it."""

    where: tuple[str, ...]
    problem: str

    def field(self, prefix: str = "") -> str:
        return ".".join(part for part in (prefix, *self.where) if part) or "body"


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate), or None when it is."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}"
    return None


def find_invalid_text(value: Any, where: tuple[str, ...] = ()) -> InvalidText | None:
    """The first string or key in a JSON value that is not valid Unicode, or None."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        return InvalidText(where, problem) if problem else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            problem = unicode_problem(name)
            if problem:
                return InvalidText((*where, printable(name)), f"key {problem}")
            found = find_invalid_text(item, (*where, name))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_invalid_text(item, (*where, str(index)))
            if found:
                return found
    return None


def printable(text: str) -> str:
    """``text`` with anything that has no UTF-8 form written as a backslash escape (safe to send)."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
