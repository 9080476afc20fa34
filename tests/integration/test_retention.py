"""Nothing outlives its retention: on the real stack, a prediction's input, output and logs are
cleared at retention (its stored objects deleted), and the whole record is gone at record expiry;
every key Kiln left in Redis is bounded as ``shared.db.keys.BOUNDS`` declares.

Deadlines are brought forward in the retention set instead of waiting an hour or 30 days: the
janitor takes what is due, whichever setting put it there (unit tests check the scheduling)."""

from __future__ import annotations

import inspect
import re
import time

import pytest
import redis

from shared.db import keys
from shared.predictions.retention import Janitor
from shared.storage.s3 import Storage
from tests.support import wait_until
from tests.support.predictions import TERMINAL, create_with_webhook
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def _key_pattern() -> re.Pattern[str]:
    """Every key builder of ``shared.db.keys`` as one pattern over the key names they make, a named
    group per builder."""
    patterns = []
    for name in keys.BOUNDS:
        builder = getattr(keys, name)
        args = ["\x00"] * len(inspect.signature(builder).parameters)
        example = builder(*args)
        patterns.append(f"(?P<{name}>" + re.escape(example).replace("\x00", ".+") + ")")
    # The most specific pattern first: a record's logs are not the record.
    return re.compile("|".join(sorted(patterns, key=len, reverse=True)))


KEY_PATTERN = _key_pattern()


def builder_of(key: str) -> str | None:
    found = KEY_PATTERN.fullmatch(key)
    return found.lastgroup if found else None


def gone_or_removed(client, prediction_id: str) -> dict | None:
    body = client.get(f"/v1/predictions/{prediction_id}").json()
    return body if body.get("data_removed") else None


def test_input_output_logs_cleared_at_retention_and_record_gone_at_expiry(stack, client):
    secret = client.get("/v1/webhooks/default/secret").json()["key"]
    with WebhookReceiver(secret) as receiver:
        created = create_with_webhook(client, receiver.url("/retention"), prompt="a prompt to forget")
        wait_until(lambda: any(r.status in TERMINAL for r in receiver.at("/retention")), 120, what="completed webhook")
    prediction_id = created["id"]
    done = client.get(f"/v1/predictions/{prediction_id}").json()
    assert done["status"] == "succeeded" and done["logs"] and done["input"]["prompt"] == "a prompt to forget"
    output_url = done["output"][0]
    assert client.get(output_url).status_code == 200

    db = redis.Redis.from_url(stack.redis_url)
    janitor = Janitor(db, Storage(stack.settings()))
    db.zadd(keys.retention(), {f"prediction:{prediction_id}": time.time() - 1})
    janitor.sweep()  # or the stack's own janitor claims it first: wait for the outcome either way
    removed = wait_until(lambda: gone_or_removed(client, prediction_id), 60, what="retention")
    assert removed["data_removed"] is True
    assert (removed["input"], removed["output"], removed["logs"]) == ({}, None, "")
    assert (removed["id"], removed["status"], removed["model"]) == (prediction_id, "succeeded", done["model"])
    assert removed["metrics"] == done["metrics"] and removed["completed_at"] == done["completed_at"]
    assert client.get(output_url).status_code == 410
    storage = janitor.storage
    stored = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=f"predictions/{prediction_id}/")
    assert stored.get("KeyCount", 0) == 0, "every stored object of the prediction is deleted"

    messages = client.get(f"/v1/predictions/{prediction_id}/webhooks").json()["results"]
    assert "completed" in [m["event"] for m in messages], "its webhook messages outlive its data"
    db.zadd(keys.retention(), {f"record:{prediction_id}": time.time() - 1})
    janitor.sweep()
    wait_until(lambda: client.get(f"/v1/predictions/{prediction_id}").status_code == 404, 60, what="record expiry")
    for message in messages:  # keyed by their own ids: gone with the record too
        assert not db.exists(keys.webhook_delivery(message["id"]), keys.webhook_delivery_attempts(message["id"]))
    assert prediction_id not in [p["id"] for p in client.get("/v1/predictions").json()["results"]]
    assert [k for k in db.scan_iter(match=f"*{prediction_id}*")] == []
    assert db.zscore(keys.retention(), f"record:{prediction_id}") is None


def test_every_key_kiln_wrote_is_declared_and_those_declared_ttl_expire(stack, client):
    """Run after other tests in the session have written every kind of key they write."""
    db = redis.Redis.from_url(stack.redis_url)
    undeclared, with_ttl = [], []
    # Thousands of keys after the batch tests: scanned in large pages, their TTLs read in one round trip.
    for raw in db.scan_iter(match=f"{keys.PREFIX}:*", count=10_000):
        key = raw.decode()
        builder = builder_of(key)
        if builder is None:
            undeclared.append(key)
        elif keys.BOUNDS[builder] == "ttl":
            with_ttl.append(key)
    with db.pipeline(transaction=False) as pipe:
        for key in with_ttl:
            pipe.ttl(key)
        without_ttl = [key for key, ttl in zip(with_ttl, pipe.execute(), strict=True) if ttl == -1]
    assert undeclared == [], "keys Kiln wrote that shared.db.keys does not declare"
    assert without_ttl == [], "keys declared to expire that carry no TTL"
