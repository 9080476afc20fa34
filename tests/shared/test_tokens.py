"""Tokens: the bootstrap set from KILN_API_TOKEN, tokens made and revoked at run time (``kiln tokens``)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import pytest

from shared.cli import run
from shared.db import keys
from shared.security.tokens import (
    TokenError,
    TokenLimits,
    TokenRegistry,
    bootstrap_tokens,
    publish_bootstrap,
    token_digest,
)


def test_bootstrap_entries_have_names_and_digests():
    found = bootstrap_tokens(f" alice=tok-a , tok-b,bob=sha256:{'ab' * 32},pad==,x=y=z ")
    assert [(t.name, t.token) for t in found[:2]] == [
        ("alice", "tok-a"),
        (f"token-{token_digest('tok-b')[:8]}", "tok-b"),
    ]
    assert (found[2].name, found[2].digest, found[2].token) == ("bob", "ab" * 32, None)
    # Base64 padding is part of a token, not a name.
    assert found[3].token == "pad==" and found[3].name.startswith("token-")
    assert (found[4].name, found[4].token) == ("x", "y=z")
    assert bootstrap_tokens(" , ") == []


def test_made_tokens_are_stored_hashed_listed_and_revoked():
    redis = fakeredis.FakeRedis()
    registry = TokenRegistry(redis, "boot=tok-boot")
    token = registry.create("alice", TokenLimits(rate_limit_per_s=2.5, max_queued=7))
    assert token.startswith("kiln_") and len(token) > 40
    record = redis.hgetall(keys.token(token_digest(token)))
    assert record[b"name"] == b"alice" and token.encode() not in b"".join(record.values())
    listed = {info.name: info for info in registry.list()}
    assert set(listed) == {"boot", "alice"}
    assert listed["alice"].limits == TokenLimits(rate_limit_per_s=2.5, max_queued=7)
    with pytest.raises(TokenError, match="exists"):
        registry.create("alice")
    with pytest.raises(TokenError, match="KILN_API_TOKEN"):
        registry.create("boot")
    with pytest.raises(TokenError, match="not a token name"):
        registry.create("no spaces")
    registry.revoke("alice")
    assert not redis.exists(keys.token(token_digest(token)))
    registry.revoke("boot")
    assert redis.sismember(keys.revoked_tokens(), token_digest("tok-boot"))
    assert registry.list() == []
    with pytest.raises(TokenError, match="no token named"):
        registry.revoke("alice")


def test_the_kiln_command_prints_a_new_token_once_and_never_lists_it():
    registry = TokenRegistry(fakeredis.FakeRedis())
    out = io.StringIO()
    assert run(["tokens", "create", "ops", "--rate-limit-per-s", "3", "--max-queued", "9"], registry, out) == 0
    token = out.getvalue().strip()
    listing = io.StringIO()
    run(["tokens", "list"], registry, listing)
    assert "ops" in listing.getvalue() and "rate_limit_per_s=3" in listing.getvalue()
    assert "max_queued=9" in listing.getvalue() and token not in listing.getvalue()
    with pytest.raises(SystemExit):
        run(["tokens", "create", "bad", "--max-queued", "0"], registry, io.StringIO())


def test_the_running_apis_bootstrap_tokens_are_seen_without_its_environment():
    redis = fakeredis.FakeRedis()
    assert publish_bootstrap(redis, "a=tok-a,tok-b") == []
    registry = TokenRegistry(redis)  # no KILN_API_TOKEN here
    listing = io.StringIO()
    run(["tokens", "list"], registry, listing)
    assert listing.getvalue().splitlines()[0].startswith("a  source=KILN_API_TOKEN")
    assert f"token-{token_digest('tok-b')[:8]}" in listing.getvalue()
    with pytest.raises(TokenError, match="running API's KILN_API_TOKEN"):
        run(["tokens", "create", "a"], registry, io.StringIO())
    assert not redis.hexists(keys.token_names(), "a")
    registry.revoke("a")
    assert redis.sismember(keys.revoked_tokens(), token_digest("tok-a"))
    assert [info.name for info in registry.list()] == [f"token-{token_digest('tok-b')[:8]}"]


def test_a_restarted_api_replaces_the_published_set_and_names_clashes():
    redis = fakeredis.FakeRedis()
    publish_bootstrap(redis, "old=tok-old")
    TokenRegistry(redis).create("made")
    assert publish_bootstrap(redis, "made=tok-m,new=tok-n") == ["made"]
    assert {info.name for info in TokenRegistry(redis).bootstrap()} == {"made", "new"}
    assert publish_bootstrap(redis, "") == [] and TokenRegistry(redis).bootstrap() == []


def test_of_concurrent_creates_of_one_name_exactly_one_wins():
    server = fakeredis.FakeServer()

    def create(_: int) -> str | None:
        try:
            return TokenRegistry(fakeredis.FakeRedis(server=server)).create("same")
        except TokenError:
            return None

    with ThreadPoolExecutor(8) as pool:
        made = [token for token in pool.map(create, range(16)) if token is not None]
    assert len(made) == 1
    redis = fakeredis.FakeRedis(server=server)
    assert redis.hget(keys.token_names(), "same") == token_digest(made[0]).encode()
    assert len(redis.keys(keys.token("*"))) == 1
