"""JSON nested past any sane depth, caught before it is parsed.

Parsers recurse (Python's ``json`` raises ``RecursionError`` after about a thousand levels, orjson
refuses past 1,024), and so does every walk over a parsed value, so a deep document would end in a
500 instead of a 4xx naming the line or field. A create body, its input and file metadata never
need more than a few levels; ``MAX_DEPTH`` leaves ample room.
"""

from __future__ import annotations

import re
from itertools import accumulate

MAX_DEPTH = 64

_ESCAPE = re.compile(rb"\\[\s\S]")
# Brackets become steps of depth (+1 and -1 as signed bytes); every other byte is dropped.
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nests_deeper_than(text: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays or objects inside one another (brackets
    inside strings do not count; unclosed ones do). Linear and in C whatever the text; free for
    text with few brackets."""
    data = text.encode(errors="surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    outside_strings = b"".join(_ESCAPE.sub(b"", data).split(b'"')[::2])
    steps = outside_strings.translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > limit


def too_deep_problem(where: str, limit: int = MAX_DEPTH) -> str:
    """The problem ``nests_deeper_than`` found, for a 4xx naming ``where``."""
    return f"{where}: JSON nested deeper than {limit} levels of arrays and objects"
