"""Cursors (``api.pagination``): whatever string a client sends as ``cursor``, a place to start a page
or a 400 naming ``cursor`` (never an exception that would be a 500, never an offset Redis cannot
take); the links a page answers carry the cursors clients already hold."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.errors import ProblemError
from api.pagination import Cursor, decode_offset, encode_cursor, id_page_links, offset_page_links

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
    """Predictions, files and batches: lists of records newest first."""
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
        offset = decode_offset(text)
    except ProblemError as problem:
        assert_cursor_problem(problem)
        return
    assert offset >= 0 and offset + 1000 <= REDIS_INDEX_MAX


@pytest.mark.parametrize("offset", [10**23, 10**15, 2**63])
def test_an_offset_past_any_batch_is_a_400(offset):
    with pytest.raises(ProblemError) as raised:
        decode_offset(encode_cursor("offset", str(offset)))
    assert_cursor_problem(raised.value)


def test_the_cursors_the_api_returns_decode_to_what_they_encode():
    assert decode_offset(encode_cursor("offset", "250")) == 250
    assert Cursor.decode(encode_cursor("after", "01jabc")) == Cursor("after", "01jabc")
    assert Cursor.decode(encode_cursor("before", "01jabc")) == Cursor("before", "01jabc")
    assert Cursor.decode(None) == Cursor() == Cursor.decode("")
    assert decode_offset(None) == 0


def test_cursors_keep_the_form_clients_hold():
    """Unpadded URL-safe base64 of ``<direction>:<bound>``: a cursor from an earlier page still works."""
    assert encode_cursor("before", "01jabc") == "YmVmb3JlOjAxamFiYw"
    assert encode_cursor("offset", "250") == "b2Zmc2V0OjI1MA"
    with pytest.raises(ProblemError) as raised:
        decode_offset("")
    assert_cursor_problem(raised.value)


IDS = ["03", "02", "01"]  # a page, newest first
URL = "https://kiln.example/v1/batches"


def link(direction: str, bound: str) -> str:
    return f"{URL}?cursor={encode_cursor(direction, bound)}"


@pytest.mark.parametrize(
    ("at", "more", "expected"),
    [
        (Cursor(), True, {"next": link("before", "01"), "previous": None}),
        (Cursor(), False, {"next": None, "previous": None}),
        (Cursor("before", "04"), False, {"next": None, "previous": link("after", "03")}),
        (Cursor("after", "00"), True, {"next": link("before", "01"), "previous": link("after", "03")}),
        (Cursor("after", "00"), False, {"next": link("before", "01"), "previous": None}),
    ],
)
def test_a_page_of_ids_links_older_and_newer_pages_where_they_exist(at, more, expected):
    assert id_page_links(URL, at, IDS, more) == expected
    assert id_page_links(URL, at, [], more) == {"next": None, "previous": None}


def test_a_page_of_offsets_links_the_pages_beside_it():
    assert offset_page_links(URL, 0, 10, True) == {"next": link("offset", "10"), "previous": None}
    assert offset_page_links(URL, 5, 10, False) == {"next": None, "previous": link("offset", "0")}
    assert offset_page_links(URL, 20, 10, True) == {"next": link("offset", "30"), "previous": link("offset", "10")}
