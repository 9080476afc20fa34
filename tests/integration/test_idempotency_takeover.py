"""An Idempotency-Key claim taken over while its request was still being processed (a retry judged the
request abandoned: its API process stopped saying it was alive, or a failover lost the claim) stores
nothing for that request: its store finds the claim naming the retry's prediction and is refused, 409
with ``Retry-After``, so one key never names two predictions."""

from __future__ import annotations

import json

import pytest
import redis

from api.intake.idempotency import TTL_S, IdempotencyKeys
from shared.db import keys
from tests.support import assert_problem
from tests.support.predictions import app_for, depth2img_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {TOKEN_A}"}
BODY = {"version": "kiln/sd2-depth2img", "input": depth2img_input()}


def test_a_request_whose_claim_was_taken_over_stores_nothing(stack, monkeypatch) -> None:
    claim = IdempotencyKeys.claim
    drawn: list[str] = []

    def taken_over_meanwhile(self, tenant, key, request_fingerprint, prediction_id, is_stored=None, record_key=None):
        owned = claim(self, tenant, key, request_fingerprint, prediction_id, is_stored, record_key)
        drawn.append(prediction_id)
        # A retry of the request takes the key over between this request's claim and its store (its claim
        # expires as every claim does: a later test of the session checks that every claim carries its TTL).
        value = json.dumps({"fingerprint": request_fingerprint, "prediction_id": "p-the-retrys", "at": 0})
        self.redis.set(self.claim_key(tenant, key), value, ex=TTL_S)
        return owned

    monkeypatch.setattr(IdempotencyKeys, "claim", taken_over_meanwhile)
    with app_for(stack) as api:
        refused = api.post("/v1/predictions", json=BODY, headers=HEADERS | {"Idempotency-Key": "taken-over"})

    assert_problem(refused, 409, "took its Idempotency-Key over")
    assert refused.headers["retry-after"] == "1"
    with redis.Redis.from_url(stack.redis_url) as client:
        assert drawn and not client.exists(keys.prediction(drawn[0]))
