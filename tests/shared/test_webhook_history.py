"""The webhook delivery log on fakeredis with Lua (``shared.webhooks.history``, and what the outbox writes
for it): each attempt kept with its delivery, a prediction's index of its deliveries, a tenant's failed
``completed`` messages in exact pages, a manual retry, and all of it gone with the prediction's record."""

from __future__ import annotations

import json

import fakeredis
import pytest

from shared.batches.records import batch_delivery_id
from shared.db import keys
from shared.predictions.record import Prediction
from shared.predictions.retention import DataRemoval, Janitor
from shared.settings import Settings
from shared.webhooks import delivery as webhook_delivery
from shared.webhooks import outbox as webhook_outbox
from shared.webhooks.delivery import AttemptResult, SignedBody, attempt_delivery
from shared.webhooks.history import DeliveryHistory, TimeWindow
from shared.webhooks.outbox import DELIVERED, FAILED, MAX_ATTEMPTS_KEPT, PENDING, WebhookOutbox

SCHEDULE = [1.0, 2.0]


def signing(delivery):
    return SignedBody(delivery.body, ["whsec_x"])


@pytest.fixture
def outbox() -> WebhookOutbox:
    settings = Settings(_env_file=None, webhook_retry_schedule_s=SCHEDULE, record_retention_s=86_400, retention_s=3600)
    return WebhookOutbox(fakeredis.FakeRedis(), settings)


@pytest.fixture
def history(outbox) -> DeliveryHistory:
    return DeliveryHistory(outbox.redis)


def prediction(tenant: str = "t1", index: int = 0) -> Prediction:
    return Prediction(
        id=f"p{index}", tenant=tenant, model="kiln/sd2-depth2img", version="v", input={}, webhook="http://x/hook"
    )


@pytest.fixture
def answers(monkeypatch) -> list[AttemptResult]:
    """What the receiver answers, in turn (then 200)."""
    scripted: list[AttemptResult] = []

    def fake_post(delivery, signed, settings):
        return scripted.pop(0) if scripted else AttemptResult("HTTP 200", succeeded=True, status_code=200)

    monkeypatch.setattr(webhook_delivery, "post_signed", fake_post)
    return scripted


def unavailable() -> AttemptResult:
    return AttemptResult("HTTP 503", succeeded=False, status_code=503)


def attempt(outbox: WebhookOutbox, delivery_id: str):
    return attempt_delivery(outbox, delivery_id, signing, outbox.settings)


def fail_completed(outbox: WebhookOutbox, answers: list[AttemptResult], subject: Prediction) -> str:
    """Record ``subject``'s completed message and attempt it until its schedule is spent."""
    completed = outbox.record(subject, "completed", '{"status": "succeeded"}')
    answers.extend(unavailable() for _ in range(len(SCHEDULE) + 1))
    for _ in range(len(SCHEDULE) + 1):
        found = attempt(outbox, completed.id)
    assert found.state == FAILED
    return completed.id


def test_each_attempt_is_kept_with_its_status_or_error_and_duration(outbox, history, answers):
    completed = outbox.record(prediction(), "completed", "{}")
    answers += [unavailable(), AttemptResult("network error: refused", succeeded=False)]
    for expected in (PENDING, PENDING, DELIVERED):
        assert attempt(outbox, completed.id).state == expected

    sent = history.get(completed.id)
    assert [(a.status_code, a.error) for a in sent.attempts] == [
        (503, None),
        (None, "network error: refused"),
        (200, None),
    ]
    assert all(a.duration_ms >= 0 for a in sent.attempts)
    assert sent.attempts[0].at <= sent.attempts[1].at <= sent.attempts[2].at
    assert sent.delivery.attempts == 3 and sent.delivery.last_outcome == "HTTP 200"


def test_a_delivery_keeps_its_latest_attempts_only(outbox, history):
    completed = outbox.record(prediction(), "completed", "{}")
    for index in range(MAX_ATTEMPTS_KEPT + 5):
        outbox.save_attempt(completed, webhook_outbox.Attempt(float(index), 503, None, 1), succeeded=False, stop=False)
    kept = history.get(completed.id).attempts
    assert len(kept) == MAX_ATTEMPTS_KEPT
    assert kept[-1].at == MAX_ATTEMPTS_KEPT + 4 and kept[0].at == 5


def test_a_finished_delivery_is_kept_as_long_as_its_record_without_its_body(outbox, answers):
    failed_id = fail_completed(outbox, answers, prediction())
    redis = outbox.redis
    kept_s = webhook_outbox.FINISHED_TTL_S + 86_400
    assert outbox.kept_s == kept_s
    for key in (keys.webhook_delivery(failed_id), keys.webhook_delivery_attempts(failed_id)):
        assert kept_s - 5 <= redis.ttl(key) <= kept_s
    assert outbox.get(failed_id).body == ""  # a retry renders a fresh one
    assert redis.zscore(keys.webhook_due(), failed_id) is None


def test_a_prediction_lists_every_message_it_recorded_oldest_first(outbox, history, answers):
    subject = prediction()
    start = outbox.record(subject, "start", "{}")
    logs = outbox.record(subject, "logs", "{}")
    completed = outbox.record(subject, "completed", "{}")
    assert outbox.record(subject, "completed", "{}") is None  # one completed message per prediction
    outbox.record(prediction(index=1), "start", "{}")  # another prediction's

    listed = history.of_prediction(subject.id)
    assert [s.delivery.id for s in listed] == [start.id, logs.id, completed.id]
    assert [s.delivery.event for s in listed] == ["start", "logs", "completed"]
    assert all(s.delivery.state == PENDING and s.attempts == [] for s in listed)
    assert outbox.redis.ttl(keys.webhook_deliveries(subject.id)) > 0, "a backstop beyond its record"


def test_only_failed_completed_messages_are_listed_as_failed(outbox, history, answers):
    subject = prediction()
    output = outbox.record(subject, "output", "{}")
    answers.append(unavailable())
    assert attempt(outbox, output.id).state == FAILED  # progress events get one attempt
    failed_id = fail_completed(outbox, answers, subject)

    page = history.failed("t1", TimeWindow(), before=None, after=None, limit=10)
    assert [s.delivery.id for s in page.results] == [failed_id]
    assert [a.status_code for a in page.results[0].attempts] == [503, 503, 503]
    assert history.failed("t2", TimeWindow(), before=None, after=None, limit=10).results == []


def test_a_batch_message_is_found_by_its_fixed_id_and_listed_when_it_fails(outbox, history, answers):
    delivery = outbox.record_once(batch_delivery_id("b1"), "b1", "t1", "http://x/batch", "{}")
    answers.extend(unavailable() for _ in range(len(SCHEDULE) + 1))
    for _ in range(len(SCHEDULE) + 1):
        attempt(outbox, delivery.id)
    assert [s.delivery.state for s in history.of_batch("b1")] == [FAILED]
    assert history.failed_ids("t1", TimeWindow(), 10) == [delivery.id]


def test_a_retry_sends_it_once_more_and_a_success_takes_it_off_the_failed_list(outbox, history, answers):
    failed_id = fail_completed(outbox, answers, prediction())
    delivery = outbox.get(failed_id)

    assert history.resend(delivery, '{"status": "succeeded", "fresh": true}')
    again = outbox.get(failed_id)
    assert (again.state, again.retry, again.body) == (PENDING, False, '{"status": "succeeded", "fresh": true}')
    assert history.failed_ids("t1", TimeWindow(), 10) == []
    assert outbox.redis.zscore(keys.webhook_due(), failed_id) is not None
    assert not history.resend(again, "{}"), "a pending message is not sent again"

    assert attempt(outbox, failed_id).state == DELIVERED
    assert [a.status_code for a in history.get(failed_id).attempts] == [503, 503, 503, 200]
    assert history.failed_ids("t1", TimeWindow(), 10) == []


def test_a_retry_of_all_failed_ones_leaves_a_message_another_retry_sent_since_it_was_listed(outbox, history, answers):
    """Two retries of all failed messages at once each listed it; the first sent it and it was delivered:
    the second sends it no more. A retry naming the message still sends it."""
    failed_id = fail_completed(outbox, answers, prediction())
    listed = outbox.get(failed_id)
    assert history.resend(listed, "{}", only_failed=True)
    assert attempt(outbox, failed_id).state == DELIVERED
    assert not history.resend(outbox.get(failed_id), "{}", only_failed=True), "delivered: no longer failed"
    assert outbox.get(failed_id).state == DELIVERED
    assert history.resend(outbox.get(failed_id), "{}"), "named: sent again"


def test_a_retry_that_fails_is_one_attempt_and_lists_it_as_failed_again(outbox, history, answers):
    failed_id = fail_completed(outbox, answers, prediction())
    assert history.resend(outbox.get(failed_id), "{}")
    answers.append(unavailable())
    assert attempt(outbox, failed_id).state == FAILED  # not put back on the schedule
    assert history.failed_ids("t1", TimeWindow(), 10) == [failed_id]
    assert len(history.get(failed_id).attempts) == len(SCHEDULE) + 2


def failing_at(monkeypatch, at: float) -> None:
    """The clock reads ``at`` (the outbox takes a failure's time from it)."""
    monkeypatch.setattr(webhook_outbox.time, "time", lambda: at)


def fail_many(outbox: WebhookOutbox, monkeypatch, times: list[float]) -> list[str]:
    """A failed completed message of a prediction of t1 per time (spent schedules, failing at it)."""
    ids = []
    for index, at in enumerate(times):
        subject = prediction(index=index)
        delivery = outbox.record(subject, "completed", "{}")
        delivery.attempts = len(SCHEDULE)  # its last attempt
        failing_at(monkeypatch, at)
        outbox.save_attempt(delivery, webhook_outbox.Attempt(at, 503, None, 3), succeeded=False, stop=False)
        ids.append(delivery.id)
    return ids


def follow(history: DeliveryHistory, window: TimeWindow, limit: int) -> list[str]:
    """Every page of t1's failed messages, following ``older_than`` from the newest."""
    seen, before = [], None
    while True:
        page = history.failed("t1", window, before=before, after=None, limit=limit)
        seen += [s.delivery.id for s in page.results]
        if page.older_than is None:
            return seen
        before = page.older_than


@pytest.mark.parametrize("limit", [1, 2, 3, 10])
def test_failed_pages_hold_every_failure_once_newest_first_even_at_the_same_time(outbox, history, monkeypatch, limit):
    # Several failed in the same microsecond: each has a score of its own, so no page boundary drops one.
    times = [1000.0, 1000.0, 1000.0, 1001.5, 1002.0, 1002.0]
    ids = fail_many(outbox, monkeypatch, times)
    assert follow(history, TimeWindow(), limit) == ids[::-1]
    window = TimeWindow(since=1_000_000_000, until=1_002_000_000)  # 1000 s included, 1002 s excluded
    assert follow(history, window, limit) == ids[:4][::-1]


def test_previous_links_page_back_to_the_newest(outbox, history, monkeypatch):
    ids = fail_many(outbox, monkeypatch, [10.0, 20.0, 30.0, 40.0, 50.0])
    first = history.failed("t1", TimeWindow(), before=None, after=None, limit=2)
    assert first.newer_than is None
    second = history.failed("t1", TimeWindow(), before=first.older_than, after=None, limit=2)
    assert [s.delivery.id for s in second.results] == [ids[2], ids[1]]
    back = history.failed("t1", TimeWindow(), before=None, after=second.newer_than, limit=2)
    assert [s.delivery.id for s in back.results] == [ids[4], ids[3]]
    assert back.newer_than is None and back.older_than is not None


def test_failures_older_than_a_finished_delivery_is_kept_leave_the_list(outbox, history, monkeypatch):
    _old, new = fail_many(outbox, monkeypatch, [100.0, 100.0 + outbox.kept_s + 1])
    assert history.failed_ids("t1", TimeWindow(), 10) == [new]


def test_record_expiry_removes_every_delivery_its_attempts_and_index(outbox, history, answers):
    subject = prediction()
    outbox.redis.hset(keys.prediction(subject.id), mapping={"tenant": json.dumps("t1")})
    start = outbox.record(subject, "start", "{}")
    attempt(outbox, start.id)
    failed_id = fail_completed(outbox, answers, subject)
    pending = outbox.record(subject, "logs", "{}")  # never attempted: still due
    kept = fail_completed(outbox, answers, prediction(index=1))

    Janitor(outbox.redis, storage=None).expire_record(subject.id)  # type: ignore[arg-type]

    for delivery_id in (start.id, failed_id, pending.id):
        assert not outbox.redis.exists(keys.webhook_delivery(delivery_id))
        assert not outbox.redis.exists(keys.webhook_delivery_attempts(delivery_id))
    assert not outbox.redis.exists(keys.webhook_deliveries(subject.id))
    assert outbox.redis.zscore(keys.webhook_due(), pending.id) is None
    assert history.failed_ids("t1", TimeWindow(), 10) == [kept]


def test_a_delivery_gone_with_its_record_leaves_the_due_set(outbox):
    delivery = outbox.record(prediction(), "completed", "{}")
    outbox.redis.delete(keys.webhook_delivery(delivery.id))
    assert attempt(outbox, delivery.id) is None
    assert outbox.redis.zscore(keys.webhook_due(), delivery.id) is None


class NoObjects:
    """Storage with nothing stored: data removal's S3 half, a no-op."""

    def delete_prefix(self, prefix: str) -> None:
        pass


SECRET_BODY = json.dumps(
    {"id": "p0", "input": {"prompt": "a secret"}, "output": ["https://x/out-0.png"], "logs": "step 1", "status": "x"}
)


def test_data_removal_scrubs_a_pending_body_and_its_retries_send_it_scrubbed(outbox, monkeypatch):
    completed = outbox.record(prediction(), "completed", SECRET_BODY)
    sent: list[str] = []

    def receiver(delivery, signed, settings):
        sent.append(signed.body)
        return unavailable()

    monkeypatch.setattr(webhook_delivery, "post_signed", receiver)
    assert attempt(outbox, completed.id).state == PENDING
    DataRemoval(outbox.redis, NoObjects()).remove(["p0"])  # type: ignore[arg-type]

    stored = outbox.redis.hget(keys.webhook_delivery(completed.id), "body")
    assert b"secret" not in stored and b"step 1" not in stored
    attempt(outbox, completed.id)
    first, retried = (json.loads(body) for body in sent)
    assert first["input"] == {"prompt": "a secret"}
    assert retried == {"id": "p0", "input": {}, "output": None, "logs": "", "status": "x", "data_removed": True}


def test_an_attempt_in_flight_during_data_removal_leaves_the_body_scrubbed(outbox, monkeypatch):
    completed = outbox.record(prediction(), "completed", SECRET_BODY)

    def removed_meanwhile(delivery, signed, settings):
        DataRemoval(outbox.redis, NoObjects()).remove(["p0"])  # type: ignore[arg-type]
        return unavailable()

    monkeypatch.setattr(webhook_delivery, "post_signed", removed_meanwhile)
    assert attempt(outbox, completed.id).state == PENDING
    assert json.loads(outbox.get(completed.id).body)["data_removed"] is True


def test_a_delivery_whose_record_expired_during_its_attempt_is_not_brought_back(outbox, monkeypatch):
    subject = prediction()
    completed = outbox.record(subject, "completed", SECRET_BODY)

    def expired_meanwhile(delivery, signed, settings):
        Janitor(outbox.redis, storage=None).expire_record(subject.id)  # type: ignore[arg-type]
        return unavailable()

    monkeypatch.setattr(webhook_delivery, "post_signed", expired_meanwhile)
    assert attempt(outbox, completed.id) is None
    redis = outbox.redis
    assert not redis.exists(keys.webhook_delivery(completed.id), keys.webhook_delivery_attempts(completed.id))
    assert redis.zscore(keys.webhook_due(), completed.id) is None
    assert redis.zcard(keys.tenant_failed_webhooks("t1")) == 0
