"""A tenant's webhook attempts under way at once are capped (``KILN_WEBHOOK_SENDING_PER_TENANT``): one whose
receivers are slow (each attempt held up to the timeout) holds no more of the webhook threads than that, and
another tenant's webhooks keep going. On fakeredis with Lua."""

from __future__ import annotations

import time

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.record import Prediction
from shared.settings import Settings
from shared.webhooks import delivery as webhook_delivery
from shared.webhooks.delivery import AttemptResult, SignedBody, attempt_delivery
from shared.webhooks.outbox import CLAIM_LEASE_S, DELIVERED, PENDING, WebhookOutbox

PLACES = 2


@pytest.fixture
def outbox() -> WebhookOutbox:
    settings = Settings(_env_file=None, webhook_sending_per_tenant=PLACES, webhook_timeout_s=5)
    return WebhookOutbox(fakeredis.FakeRedis(), settings)


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the deliveries the receiver got (it answers 200)."""
    got: list[str] = []

    def receiver(delivery, signed, settings):
        got.append(delivery.id)
        return AttemptResult("HTTP 200", succeeded=True, status_code=200)

    monkeypatch.setattr(webhook_delivery, "post_signed", receiver)
    return got


def completed(outbox: WebhookOutbox, tenant: str, index: int):
    subject = Prediction(id=f"{tenant}-{index}", tenant=tenant, model="m", version="v", input={}, webhook="http://x/")
    return outbox.record(subject, "completed", "{}")


def attempt(outbox: WebhookOutbox, delivery_id: str):
    return attempt_delivery(outbox, delivery_id, lambda d: SignedBody(d.body, ["whsec_x"]), outbox.settings)


def test_a_tenant_with_every_place_taken_waits_and_another_tenant_is_sent(outbox, posted) -> None:
    slow = [completed(outbox, "slow", index) for index in range(PLACES + 1)]
    for held in slow[:PLACES]:  # attempts under way at slow receivers
        assert outbox.take_sending_place(held)
    waiting_id = slow[PLACES].id
    assert attempt(outbox, waiting_id) is None
    waiting = outbox.get(waiting_id)
    assert waiting.state == PENDING and waiting.attempts == 0
    assert outbox.redis.zrange(keys.webhook_tenant_waiting("slow"), 0, -1) == [waiting_id.encode()]
    # Due again only when a claim would lapse, should no attempt of its tenant end first.
    assert outbox.redis.zscore(keys.webhook_due(), waiting_id) >= time.time() + CLAIM_LEASE_S - 5
    assert not outbox.redis.exists(keys.webhook_attempt_lock(waiting_id))
    other = completed(outbox, "other", 0)
    assert attempt(outbox, other.id).state == DELIVERED
    assert posted == [other.id]

    outbox.leave_sending_place(slow[0])  # an attempt at a slow receiver ended: the one waiting is due now
    assert outbox.redis.zscore(keys.webhook_due(), waiting_id) <= time.time()
    assert outbox.redis.zcard(keys.webhook_tenant_waiting("slow")) == 0
    assert attempt(outbox, waiting_id).state == DELIVERED and posted == [other.id, waiting_id]


def test_a_woken_delivery_that_finished_meanwhile_is_not_due_again(outbox, posted) -> None:
    first, second = (completed(outbox, "t", index) for index in range(2))
    outbox.redis.zadd(keys.webhook_tenant_waiting("t"), {second.id: 0})  # it waited, then its claim lapsed
    assert attempt(outbox, second.id).state == DELIVERED  # attempted meanwhile: out of the due set
    assert outbox.take_sending_place(first)
    outbox.leave_sending_place(first)
    assert outbox.redis.zscore(keys.webhook_due(), second.id) is None


def test_an_attempt_leaves_its_place_and_a_lapsed_claim_frees_its_own(outbox, posted) -> None:
    first, second, third = (completed(outbox, "t", index) for index in range(3))
    assert attempt(outbox, first.id).state == DELIVERED
    assert outbox.redis.zcard(keys.webhook_tenant_sending("t")) == 0
    assert outbox.take_sending_place(second) and outbox.take_sending_place(third)
    # The process attempting ``second`` died: its claim lapses, and its place with it.
    lapsed = time.time() - 1
    outbox.redis.zadd(keys.webhook_tenant_sending("t"), {second.id: lapsed})
    fourth = completed(outbox, "t", 3)
    assert attempt(outbox, fourth.id).state == DELIVERED
    assert 0 < outbox.redis.ttl(keys.webhook_tenant_sending("t")) <= CLAIM_LEASE_S
