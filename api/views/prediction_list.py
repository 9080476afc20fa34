"""``GET /v1/predictions``: the tenant's predictions, newest first, filtered as Replicate filters them
(``created_after``, ``created_before``, ``source``), in cursor pages (``api.pagination``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ulid import ULID

from api.errors import ProblemError
from api.pagination import Cursor
from shared.predictions.record import Prediction, format_timestamp
from shared.predictions.store import PredictionStore

SOURCES = ("api", "web")
# A page scans at most this many pages' worth of predictions for matches; the next link goes on.
SCAN_PAGES = 10
# Ids carry their creation time to the millisecond; bounds derived from times leave this much room.
ID_SLACK = timedelta(seconds=1)


def parse_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 time (``2026-11-26T10:00:00Z``; no offset means UTC) as UTC, or a 400 naming ``name``
    (also for a time whose UTC date falls outside years 1-9999, such as year 1 at +14:00)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ProblemError(
            400, f"{name}: {value[:60]!r} is not an ISO 8601 time such as 2026-11-26T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ProblemError(
            400, f"{name}: {value[:60]!r} is out of range: in UTC it must fall within the years 1 to 9999"
        ) from None


def _shifted(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, held at the earliest or latest time there is instead of overflowing."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if delta > timedelta(0) else datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PredictionFilter:
    created_after: datetime | None = None
    created_before: datetime | None = None
    source: str | None = None

    @classmethod
    def parse(cls, created_after: str | None, created_before: str | None, source: str | None) -> PredictionFilter:
        if source is not None and source not in SOURCES:
            raise ProblemError(400, f"source: {source[:40]!r} is not one of {', '.join(SOURCES)}")
        return cls(parse_time("created_after", created_after), parse_time("created_before", created_before), source)

    def matches(self, prediction: Prediction) -> bool:
        return (
            (self.created_after is None or prediction.created_at > self.created_after)
            and (self.created_before is None or prediction.created_at < self.created_before)
            and (self.source is None or prediction.source == self.source)
        )

    def too_old(self, prediction: Prediction) -> bool:
        """Past the oldest a match can be: scanning towards older ones can stop."""
        return self.created_after is not None and prediction.created_at < _shifted(self.created_after, -ID_SLACK)

    def too_new(self, prediction: Prediction) -> bool:
        return self.created_before is not None and prediction.created_at > _shifted(self.created_before, ID_SLACK)

    def as_query(self) -> dict[str, str]:
        """The filters as query parameters, for page links."""
        query = {}
        if self.created_after is not None:
            query["created_after"] = format_timestamp(self.created_after) or ""
        if self.created_before is not None:
            query["created_before"] = format_timestamp(self.created_before) or ""
        if self.source is not None:
            query["source"] = self.source
        return query


def _id_at(moment: datetime) -> str:
    """The smallest id made at ``moment`` (ids sort by creation time)."""
    milliseconds = max(0, int(moment.timestamp() * 1000))
    return str(ULID.from_bytes(milliseconds.to_bytes(6, "big") + bytes(10))).lower()


@dataclass
class Page:
    results: list[Prediction]
    # Bounds for the links: go on after this id towards older ones / newer ones (None: nothing there).
    older_than: str | None
    newer_than: str | None


def list_page(store: PredictionStore, tenant: str, cursor: Cursor, limit: int, filters: PredictionFilter) -> Page:
    """One page of the tenant's matching predictions, newest first, from ``cursor``. Scans at most
    ``SCAN_PAGES`` pages of predictions; a page can then be short, and its ``next`` goes on from there."""
    backwards = cursor.direction == "before"  # towards older predictions
    bound = cursor.bound
    if bound is None and backwards and filters.created_before is not None:
        bound = _id_at(_shifted(filters.created_before, ID_SLACK))  # skip what is certainly too new
    if bound is None and not backwards and filters.created_after is not None:
        bound = _id_at(_shifted(filters.created_after, -ID_SLACK))
    found: list[Prediction] = []
    last_seen: str | None = None
    ahead = False  # more predictions to look at beyond last_seen, in the direction of travel
    for _ in range(SCAN_PAGES):
        chunk, more = store.list_for_tenant(
            tenant, before=bound if backwards else None, after=None if backwards else bound, limit=limit
        )
        chunk = chunk if backwards else chunk[::-1]  # in the direction of travel
        ahead = more
        for index, prediction in enumerate(chunk):
            if filters.too_old(prediction) if backwards else filters.too_new(prediction):
                return _page(backwards, cursor, found, None)
            last_seen = prediction.id
            if filters.matches(prediction):
                found.append(prediction)
            if len(found) == limit:
                return _page(backwards, cursor, found, last_seen if more or index + 1 < len(chunk) else None)
        if not more or not chunk:
            break
        bound = last_seen
    return _page(backwards, cursor, found, last_seen if ahead else None)


def _page(backwards: bool, cursor: Cursor, found: list[Prediction], ahead: str | None) -> Page:
    """The page (newest first) and its links: ``ahead`` continues the way it travelled; the other way
    starts from its first match (none on a first page)."""
    if backwards:
        behind = found[0].id if found and cursor.bound is not None else None
        return Page(found, older_than=ahead, newer_than=behind)
    return Page(found[::-1], older_than=found[0].id if found else None, newer_than=ahead)
