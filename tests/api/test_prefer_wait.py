"""``Prefer: wait`` as RFC 7240 and Replicate's docs have it: ``wait=N`` a whole number of seconds
from 1 to 60, a bare ``wait`` the service's default, other preferences ignored, a malformed ``wait``
a 400 naming the header."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import ProblemError
from api.streams.waiting import MAX_WAIT_S, parse_prefer_wait

DEFAULT_S = 25


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("respond-async", None),
        ("return=minimal", None),
        ("wait", DEFAULT_S),
        ("wait=1", 1),
        ("wait=60", 60),
        ("wait=05", 5),
        ("wait=000060", 60),
        ("wait=" + "0" * 100 + "7", 7),
        ("wait = 30", 30),
        ("Wait=7", 7),
        ('wait="9"', 9),
        ("wait=5; foo=bar", 5),
        ("respond-async, wait=10", 10),
        ("wait=10, wait=abc", 10),
        ("waiting=abc", None),
        ("wait=", DEFAULT_S),
    ],
)
def test_wait_is_read_as_the_rfc_and_replicate_have_it(header, seconds):
    assert parse_prefer_wait(header, DEFAULT_S) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "wait=-1",
        "wait=abc",
        "wait=1.5",
        "wait=0",
        "wait=61",
        "wait=1e1",
        "wait=+5",
        "wait=٣",
        "wait=" + "9" * 5000,
        "respond-async, wait=x",
    ],
)
def test_a_malformed_or_out_of_range_wait_is_a_400_naming_the_header(header):
    with pytest.raises(ProblemError) as raised:
        parse_prefer_wait(header, DEFAULT_S)
    assert raised.value.status == 400 and raised.value.detail.startswith("Prefer: wait")


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None, database=None)
def test_any_prefer_header_is_a_wait_in_range_nothing_or_a_400(header):
    try:
        seconds = parse_prefer_wait(header, DEFAULT_S)
    except ProblemError as problem:
        assert problem.status == 400 and problem.detail.startswith("Prefer: wait")
        return
    assert seconds is None or 1 <= seconds <= MAX_WAIT_S
