"""``api.ratelimit.SpentBuckets``: a token whose bucket was found without a request left is refused at once,
for exactly as long as the bucket takes to hold one again, and never after."""

from __future__ import annotations

import pytest

import api.ratelimit
from api.ratelimit import SPENT_KEPT, Decision, SpentBuckets

RATE, BURST = 10.0, 5


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(api.ratelimit.time, "monotonic", lambda: now[0])
    return now


def refused(tokens: float) -> Decision:
    return Decision.of(False, tokens, 1, RATE, BURST)


def test_a_spent_bucket_is_refused_until_it_holds_a_request_again(clock: list[float]) -> None:
    spent = SpentBuckets()
    spent.note("t", refused(0.25), RATE, BURST)  # one request in 0.075 s at 10 per second
    clock[0] += 0.07
    found = spent.refusal("t")
    assert found is not None
    bucket, decision = found
    assert (bucket.rate_per_s, bucket.burst) == (RATE, BURST)
    assert (decision.allowed, decision.remaining, decision.retry_after_s) == (False, 0, 1)
    assert decision.tokens == pytest.approx(0.95)
    clock[0] += 0.006
    assert spent.refusal("t") is None, "refilled: the bucket decides again"
    assert spent.refusal("t") is None and spent.refusal("other") is None


def test_only_a_bucket_without_a_request_left_is_noted(clock: list[float]) -> None:
    spent = SpentBuckets()
    spent.note("allowed", Decision.of(True, 0.0, 1, RATE, BURST), RATE, BURST)
    spent.note("costly", Decision.of(False, 3.0, 4, RATE, BURST), RATE, BURST)  # a single request would fit
    assert spent.refusal("allowed") is None and spent.refusal("costly") is None


def test_the_tokens_kept_are_bounded(clock: list[float]) -> None:
    spent = SpentBuckets()
    for n in range(SPENT_KEPT + 1):
        spent.note(f"t{n}", refused(0.0), RATE, BURST)
    assert spent.refusal(f"t{SPENT_KEPT}") is not None and spent.refusal("t0") is None
