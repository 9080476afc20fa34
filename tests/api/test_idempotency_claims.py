"""An Idempotency-Key claimed by a request that died before storing anything (its API process killed, or
a failover that lost what it stored) is taken over by the next request with the key once it is stale,
instead of answering 409 "still being processed" for the key's whole day (found by the fleet chaos run)."""

from __future__ import annotations

import fakeredis
import pytest

from api.errors import ProblemError
from api.intake import idempotency
from api.intake.idempotency import IdempotencyKeys


@pytest.fixture
def claims() -> IdempotencyKeys:
    return IdempotencyKeys(fakeredis.FakeRedis())


def never_stored(prediction_id: str) -> bool:
    return False


def test_a_fresh_claim_is_waited_for_even_if_nothing_is_stored_yet(claims) -> None:
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    assert claims.claim("t", "k", "fp", "second", never_stored) == "first"


def test_a_stale_claim_that_stored_nothing_is_taken_over(claims, monkeypatch) -> None:
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    monkeypatch.setattr(idempotency, "STALE_CLAIM_S", -1.0)
    assert claims.claim("t", "k", "fp", "second", never_stored) is None
    # The key now names the second request's prediction.
    assert claims.claim("t", "k", "fp", "third", lambda prediction_id: prediction_id == "second") == "second"


def test_a_stale_claim_whose_prediction_was_stored_is_kept(claims, monkeypatch) -> None:
    assert claims.claim("t", "k", "fp", "first") is None
    monkeypatch.setattr(idempotency, "STALE_CLAIM_S", -1.0)
    assert claims.claim("t", "k", "fp", "second", lambda prediction_id: True) == "first"
    assert claims.claim("t", "k", "fp", "second") == "first"  # without a check, never taken over


def test_another_body_is_still_a_409(claims, monkeypatch) -> None:
    assert claims.claim("t", "k", "fp", "first") is None
    monkeypatch.setattr(idempotency, "STALE_CLAIM_S", -1.0)
    with pytest.raises(ProblemError, match="different request body"):
        claims.claim("t", "k", "other", "second", never_stored)
