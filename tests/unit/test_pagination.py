"""Cursor decoders: whatever string a client sends as ``cursor``, a place to start a page or a 400
naming ``cursor`` (never an exception that would be a 500, never an offset Redis cannot take)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.errors import ProblemError
from api.pagination import Cursor
from api.routes.batches import _decode_offset, decode_cursor, encode_cursor

FUZZ = settings(max_examples=500, deadline=None, database=None)
# Redis list indexes are signed 64-bit; a page reads from the offset up to a page's length on.
REDIS_INDEX_MAX = 2**63 - 1


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def cursor_texts() -> st.SearchStrategy[str]:
    """Raw strings, and strings that decode to something close to what the API returns."""
    inner = st.builds(
        "{}:{}".format,
        st.sampled_from(["before", "after", "offset", "", "BEFORE"]),
        st.text(max_size=30) | st.integers(min_value=-(10**30), max_value=10**30).map(str),
    )
    return st.text(max_size=300) | inner.map(b64)


def assert_cursor_problem(problem: ProblemError) -> None:
    assert problem.status == 400 and problem.detail.startswith("cursor")


@given(cursor_texts())
@example(b64("before:" + "a" * 10_000))
@FUZZ
def test_any_list_cursor_is_a_start_or_a_400(text):
    try:
        cursor = Cursor.decode(text)
    except ProblemError as problem:
        assert_cursor_problem(problem)
        return
    assert cursor.direction in {"before", "after"}
    assert cursor.bound is None or (cursor.bound.isascii() and cursor.bound.isalnum())


@given(cursor_texts())
@example(b64(f"offset:{10**23}"))
@FUZZ
def test_any_batch_page_cursor_is_an_offset_redis_takes_or_a_400(text):
    try:
        offset = _decode_offset(text)
    except ProblemError as problem:
        assert_cursor_problem(problem)
        return
    assert offset >= 0 and offset + 1000 <= REDIS_INDEX_MAX


@given(cursor_texts())
@FUZZ
def test_any_batch_list_cursor_is_a_start_or_a_400(text):
    try:
        direction, bound = decode_cursor(text)
    except ProblemError as problem:
        assert_cursor_problem(problem)
        return
    assert direction in {"before", "after"} and bound.isascii() and bound.isalnum()


@pytest.mark.parametrize("offset", [10**23, 10**15, 2**63])
def test_an_offset_past_any_batch_is_a_400(offset):
    with pytest.raises(ProblemError) as raised:
        _decode_offset(encode_cursor("offset", str(offset)))
    assert_cursor_problem(raised.value)


def test_the_cursors_the_api_returns_decode_to_what_they_encode():
    assert _decode_offset(encode_cursor("offset", "250")) == 250
    assert decode_cursor(encode_cursor("after", "01jabc")) == ("after", "01jabc")
    assert Cursor.decode(Cursor.encode("before", "01jabc")) == Cursor("before", "01jabc")
    assert Cursor.decode(None) == Cursor()
