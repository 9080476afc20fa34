"""An Idempotency-Key claimed by a request that died before storing anything (its API process killed, or
a failover that lost what it stored) is taken over by the next request with the key once it is stale,
instead of answering 409 "still being processed" for the key's whole day (found by the fleet chaos run).
A request that failed, or whose prediction a failover lost, releases its key (through a failover), so that
its retry creates the prediction at once; one whose prediction was stored keeps it."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

from api.errors import ProblemError
from api.intake import idempotency
from api.intake.idempotency import IdempotencyKeys
from api.intake.submission import _one_refused, confirm_created
from shared.db import keys
from shared.db.client import AlreadyStored
from shared.db.replication import NotReplicated
from tests.support import run_on_own_loop


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


class FailingOver(fakeredis.FakeRedis):
    """A Redis whose next ``failures`` deletes fail as a failover fails them (the primary gone, no new one yet)."""

    failures = 0

    def delete(self, *names):
        if self.failures:
            self.failures -= 1
            raise redis.exceptions.ConnectionError("Connection refused")
        return super().delete(*names)


def test_a_release_that_meets_a_failover_is_retried_until_the_key_is_free(monkeypatch) -> None:
    # A create that claimed its key, then failed at a failover whose release failed too: every retry of it
    # waited 10 s for a prediction never stored and was answered 409, until the claim was stale (2 minutes).
    monkeypatch.setattr(idempotency, "RELEASE_RETRY_WAIT_S", 0.0)
    claims = IdempotencyKeys(FailingOver())
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    claims.redis.failures = 3
    with pytest.raises(ConnectionError, match="the store failed"), claims.released_on_failure("t", "k"):
        raise ConnectionError("the store failed")
    assert claims.claim("t", "k", "fp", "second", never_stored) is None, "a retry creates its prediction at once"


def test_a_release_gives_up_once_redis_stays_down(monkeypatch) -> None:
    monkeypatch.setattr(idempotency, "RELEASE_RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(idempotency, "RELEASE_RETRY_S", 0.0)
    claims = IdempotencyKeys(FailingOver())
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    claims.redis.failures = 1_000_000
    with pytest.raises(redis.exceptions.ConnectionError):
        claims.release("t", "k")


def stand_in_services(claims: IdempotencyKeys, stored: set[str]) -> Any:
    """What ``confirm_created`` and ``_one_refused`` use of ``Services``: the claims, the store (which holds
    ``stored``), and replicas that confirm every write (``KILN_REDIS_MIN_REPLICAS_ACK=1``)."""

    def confirm(still_there: Callable[[], bool] | None = None) -> None:
        if still_there is not None and not still_there():
            raise NotReplicated(0, 1)

    return SimpleNamespace(
        idempotency=claims,
        store=SimpleNamespace(get=lambda prediction_id: object() if prediction_id in stored else None),
        core=SimpleNamespace(replication=SimpleNamespace(confirm=confirm)),
        settings=SimpleNamespace(redis_min_replicas_ack=1),
    )


def test_a_create_a_failover_lost_after_storing_it_frees_its_key(claims) -> None:
    # Stored on the primary, which died before its replica had it: the 503 asks for a retry, which creates
    # the prediction again at once (no claim left naming a prediction that will never be stored).
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    with pytest.raises(ProblemError, match="not yet confirmed"):
        confirm_created(stand_in_services(claims, stored=set()), prediction_of("first"), "k")
    assert claims.claim("t", "k", "fp", "second", never_stored) is None


def test_a_stored_create_not_yet_confirmed_keeps_its_key(claims) -> None:
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    confirm_created(stand_in_services(claims, stored={"first"}), prediction_of("first"), "k")
    assert claims.claim("t", "k", "fp", "second", never_stored) == "first"


def test_a_create_whose_retried_store_found_its_own_first_try_keeps_its_key(claims) -> None:
    # The store's first try ran, its answer lost in a failover; the client's retry of the script finds the id
    # taken. Releasing the key would let the request's retry create a second prediction for it.
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    services = stand_in_services(claims, stored={"first"})
    _one_refused(services, prediction_of("first"), AlreadyStored(["kiln:prediction:first"]), "k")
    assert claims.claim("t", "k", "fp", "second", never_stored) == "first"


def test_a_release_leaves_a_key_another_request_took_over(claims, monkeypatch) -> None:
    assert claims.claim("t", "k", "fp", "first", never_stored) is None
    monkeypatch.setattr(idempotency, "STALE_CLAIM_S", -1.0)
    assert claims.claim("t", "k", "fp", "second", never_stored) is None
    claims.release("t", "k", "first")  # the first request's late failure
    assert claims.claim("t", "k", "fp", "third", lambda prediction_id: True) == "second"


def prediction_of(prediction_id: str) -> Any:
    return SimpleNamespace(id=prediction_id, tenant="t", input_files=[])


def test_a_claim_whose_api_process_died_is_taken_over_long_before_it_is_stale(monkeypatch) -> None:
    # An API process SIGKILLed between a create's claim and its store (the fleet run's API kill): its retry
    # took 2 minutes (409 "still being processed" until the claim was stale), now OWNER_GONE_S and a beat.
    client = fakeredis.FakeRedis()
    killed, other = IdempotencyKeys(client, owner="killed"), IdempotencyKeys(client, owner="other")
    client.set(keys.api_alive("killed"), "1")
    client.set(keys.api_alive("other"), "1")
    assert killed.claim("t", "k", "fp", "first", never_stored) is None
    monkeypatch.setattr(idempotency, "OWNER_GONE_S", -1.0)  # the claim is old enough; its process still beats
    assert other.claim("t", "k", "fp", "second", never_stored) == "first"
    client.delete(keys.api_alive("killed"))  # no beat for OWNER_TTL_S: the process is gone
    assert other.claim("t", "k", "fp", "second", never_stored) is None


def test_a_young_claim_of_a_gone_process_is_still_waited_for(monkeypatch) -> None:
    client = fakeredis.FakeRedis()
    gone, other = IdempotencyKeys(client, owner="gone"), IdempotencyKeys(client, owner="other")
    assert gone.claim("t", "k", "fp", "first", never_stored) is None
    assert other.claim("t", "k", "fp", "second", never_stored) == "first"


def test_an_api_process_says_it_is_alive_while_it_runs() -> None:
    async def started_and_closed() -> int:
        client = fakeredis.FakeAsyncRedis()
        claims = IdempotencyKeys(fakeredis.FakeRedis(), owner="me")
        await claims.start(client)
        try:
            return int(await client.ttl(keys.api_alive("me")))
        finally:
            await claims.close()

    assert 0 < run_on_own_loop(started_and_closed()) <= idempotency.OWNER_TTL_S


def test_a_fenced_claim_that_stored_nothing_is_taken_over_while_its_process_lives(monkeypatch) -> None:
    # The fleet run: a create stored on a primary that died before its replica had the record (the claim had
    # reached it): its process lived on, so every retry waited 10 s and was answered 409 for 85 s. A single
    # create's store checks its claim, so its claim can be taken over as soon as it stored nothing for a while.
    client = fakeredis.FakeRedis()
    alive = IdempotencyKeys(client, owner="alive")
    client.set(keys.api_alive("alive"), "1")
    stored = lambda prediction_id: bool(client.exists(keys.prediction(prediction_id)))  # noqa: E731
    assert alive.claim("t", "k", "fp", "first", stored, keys.prediction) is None
    assert alive.claim("t", "k", "fp", "second", stored, keys.prediction) == "first"  # young: waited for
    monkeypatch.setattr(idempotency, "FENCED_TAKEOVER_S", -1.0)
    assert alive.claim("t", "k", "fp", "second", stored, keys.prediction) is None
    # An unfenced claim (a batch's, the low lane's) of a live process is still waited for.
    assert alive.claim("t", "other", "fp", "first", stored) is None
    assert alive.claim("t", "other", "fp", "second", stored) == "first"


def test_a_fenced_claim_is_not_taken_over_once_its_request_stored_it() -> None:
    # The takeover watches the record: the first request storing between the retry's check and its swap
    # aborts the swap, and the retry replays the first request's prediction; never two predictions.
    client = fakeredis.FakeRedis()
    claims = IdempotencyKeys(client)
    assert claims.claim("t", "k", "fp", "first", never_stored, keys.prediction) is None
    raw = client.get(claims.claim_key("t", "k"))
    client.set(keys.prediction("first"), "stored meanwhile")
    assert not claims._replaced(claims.claim_key("t", "k"), raw, "{}", keys.prediction("first"))
    assert json.loads(client.get(claims.claim_key("t", "k")))["prediction_id"] == "first"
