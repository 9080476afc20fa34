"""JSON nesting measured before parsing: brackets in strings ignored, linear on hostile text."""

from __future__ import annotations

import time

from api.json_nesting import MAX_DEPTH, nested_too_deep


def test_depth_at_the_limit_passes_and_one_more_is_refused():
    assert not nested_too_deep("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert nested_too_deep("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert nested_too_deep(b'{"a": ' * (MAX_DEPTH + 1))  # unclosed counts as well
    assert not nested_too_deep("[1]," * 10_000)  # many brackets side by side are not deep


def test_brackets_inside_strings_do_not_count():
    assert not nested_too_deep('{"prompt": "' + "[" * 10_000 + '"}')
    assert not nested_too_deep('{"prompt": "\\"' + "[" * 10_000 + '"}')  # an escaped quote stays inside
    assert nested_too_deep('{"a": "\\\\"' + ", " + "[" * 100 + "]" * 100 + "}")  # an escaped backslash ends it


def test_hostile_text_is_measured_in_linear_time():
    started = time.perf_counter()
    for text in ('"' + '\\"' * 2_500_000, "[" * 5_000_000, '"a"' * 1_000_000 + "["):
        nested_too_deep(text)
    assert time.perf_counter() - started < 5
