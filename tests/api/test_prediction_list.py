"""``GET /v1/predictions``'s pages with filters (fakeredis): every match exactly once, in order,
whichever way the pages are followed, and bad filters refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ulid import ULID

from api.errors import ProblemError
from api.pagination import Cursor
from api.views.prediction_list import PredictionFilter, list_page
from shared.predictions.record import Prediction
from shared.predictions.store import PredictionStore

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def store() -> tuple[PredictionStore, list[Prediction]]:
    store = PredictionStore(fakeredis.FakeRedis())
    made = []
    for i in range(12):
        prediction = Prediction(
            tenant="t1",
            model="kiln/sd2-depth2img",
            version="v",
            input={},
            source="web" if i % 3 == 0 else "api",
            created_at=START + timedelta(minutes=i),
        )
        # Ids are ULIDs of the creation time, as new_id() makes them.
        prediction.id = str(ULID.from_datetime(prediction.created_at)).lower()
        store.create(prediction)
        made.append(prediction)
    return store, made


def follow(store: PredictionStore, filters: PredictionFilter, limit: int) -> list[str]:
    seen, cursor = [], Cursor()
    while True:
        page = list_page(store, "t1", cursor, limit, filters)
        seen += [p.id for p in page.results]
        if page.older_than is None:
            return seen
        cursor = Cursor("before", page.older_than)


@pytest.mark.parametrize("limit", [1, 2, 5, 100])
def test_pages_hold_every_match_once_newest_first(store, limit):
    store, made = store
    filters = PredictionFilter(source="web", created_after=START + timedelta(minutes=2))
    expected = [p.id for p in reversed(made) if p.source == "web" and p.created_at > START + timedelta(minutes=2)]
    assert follow(store, filters, limit) == expected


def test_created_before_and_going_back(store):
    store, made = store
    filters = PredictionFilter(created_before=START + timedelta(minutes=5))
    first = list_page(store, "t1", Cursor(), 2, filters)
    assert [p.id for p in first.results] == [made[4].id, made[3].id] and first.newer_than is None
    second = list_page(store, "t1", Cursor("before", first.older_than), 2, filters)
    assert [p.id for p in second.results] == [made[2].id, made[1].id]
    back = list_page(store, "t1", Cursor("after", second.newer_than), 2, filters)
    assert [p.id for p in back.results] == [made[4].id, made[3].id]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("soon", None, None), "created_after"),
        ((None, "2026-02-30", None), "created_before"),
        ((None, None, "x"), "source"),
    ],
)
def test_bad_filters_name_the_parameter(args, field):
    with pytest.raises(ProblemError) as raised:
        PredictionFilter.parse(*args)
    assert raised.value.status == 400 and raised.value.detail.startswith(field)


def test_a_time_without_offset_is_utc():
    assert PredictionFilter.parse("2026-11-26T10:00:00", None, None).created_after == START


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("0001-01-01T00:00:00+14:00", None), "created_after"),
        ((None, "9999-12-31T23:59:59-14:00"), "created_before"),
    ],
)
def test_a_time_outside_the_calendar_in_utc_is_a_400_naming_the_parameter(args, field):
    with pytest.raises(ProblemError) as raised:
        PredictionFilter.parse(*args, None)
    assert raised.value.status == 400 and raised.value.detail.startswith(field) and "range" in raised.value.detail


@pytest.mark.parametrize(
    ("created_after", "created_before"),
    [
        ("0001-01-01T00:00:00Z", None),
        (None, "9999-12-31T23:59:59.999999Z"),
        ("0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+14:00"),
        ("9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_times_at_the_ends_of_the_calendar_list_a_page_both_ways(store, created_after, created_before):
    store, made = store
    filters = PredictionFilter.parse(created_after, created_before, None)
    everything = created_after is None or created_after.startswith("0001")
    expected = [p.id for p in reversed(made)] if everything and created_before != "0001-01-01T00:00:00Z" else []
    assert follow(store, filters, 5) == expected
    assert list_page(store, "t1", Cursor("after"), 100, filters).results == [
        p for p in reversed(made) if p.id in expected
    ]
    assert filters.as_query()


@given(st.text(max_size=40) | st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]))
@settings(max_examples=300, deadline=None, database=None)
def test_any_filter_text_lists_a_page_or_is_a_400(text):
    store = PredictionStore(fakeredis.FakeRedis())
    try:
        filters = PredictionFilter.parse(text, text, None)
    except ProblemError as problem:
        assert problem.status == 400 and problem.detail.startswith("created_")
        return
    for cursor in (Cursor(), Cursor("after")):
        assert list_page(store, "t1", cursor, 5, filters).results == []
    filters.as_query()
