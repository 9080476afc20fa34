"""JSON nesting measured before parsing: brackets in strings ignored, linear on hostile text."""

from __future__ import annotations

import struct
import time

import pytest

from shared.inputs.json_nesting import MAX_DEPTH, nests_deeper_than
from shared.inputs.safetensors_files import SafetensorsInputError, read_safetensors_header


def test_depth_at_the_limit_passes_and_one_more_is_refused():
    assert not nests_deeper_than("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert nests_deeper_than("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert nests_deeper_than(b'{"a": ' * (MAX_DEPTH + 1))  # unclosed counts as well
    assert not nests_deeper_than("[1]," * 10_000)  # many brackets side by side are not deep


def test_brackets_inside_strings_do_not_count():
    assert not nests_deeper_than('{"prompt": "' + "[" * 10_000 + '"}')
    assert not nests_deeper_than('{"prompt": "\\"' + "[" * 10_000 + '"}')  # an escaped quote stays inside
    assert nests_deeper_than('{"a": "\\\\"' + ", " + "[" * 100 + "]" * 100 + "}")  # an escaped backslash ends it


def test_hostile_text_is_measured_in_linear_time():
    started = time.perf_counter()
    for text in ('"' + '\\"' * 2_500_000, "[" * 5_000_000, '"a"' * 1_000_000 + "["):
        nests_deeper_than(text)
    assert time.perf_counter() - started < 5


def test_a_safetensors_header_of_unclosed_brackets_is_refused_before_parsing():
    raw = b"[" * 200_000  # json.loads would raise RecursionError on it
    with pytest.raises(SafetensorsInputError, match="nests deeper"):
        read_safetensors_header([struct.pack("<Q", len(raw)) + raw])
