"""Tenants cannot forge or read each other's things: a webhook secret per token, with
rotation; signed output URLs that expire; tokens made, limited and revoked at run time."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.db import keys
from shared.security.server_secrets import url_signing_secret
from shared.security.signed_urls import UrlSigner
from shared.security.tokens import tenant_of, token_digest
from shared.webhooks.signing import signature_headers
from tests.support import REPO_ROOT, assert_problem, python, wait_for_status, wait_until
from tests.support.predictions import TERMINAL, app_for, create, create_with_webhook, depth2img_input
from tests.support.receiver import WebhookReceiver
from tests.support.step_gates import StepGate
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
FAST = {"width": 64, "height": 64}


def secret_of(client) -> str:
    key = client.get("/v1/webhooks/default/secret").json()["key"]
    assert key.startswith("whsec_")
    return key


def test_each_token_signs_with_its_own_secret_and_b_cannot_sign_for_a(stack, client, other_client):
    secret_a, secret_b = secret_of(client), secret_of(other_client)
    assert secret_a != secret_b and secret_of(client) == secret_a

    # B's real deliveries fail A's verification: A's receiver rejects every one of them...
    with WebhookReceiver(secret_a) as receiver_a, WebhookReceiver(secret_b) as receiver_b:
        create_with_webhook(other_client, receiver_a.url("/b-to-a"), ["completed"], **FAST)
        create_with_webhook(other_client, receiver_b.url("/b-to-b"), ["completed"], **FAST)
        wait_until(lambda: receiver_b.at("/b-to-b"), 60, what="B's completed webhook at B's receiver")
        wait_until(lambda: receiver_a.bad_signatures >= 1, 30, what="A's receiver to reject B's delivery")
        assert receiver_a.at("/b-to-a") == []
    # ... and so does any body B signs: a forged "succeeded" for one of A's predictions.
    forged_body = '{"id": "a-prediction", "status": "succeeded", "output": ["https://evil.example/x.png"]}'
    forged = signature_headers([secret_b], "msg_forged", datetime.now(UTC), forged_body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_a).verify(forged_body, forged)


def test_a_rotation_signs_with_both_secrets_during_the_overlap_then_with_the_new_one(stack):
    _, token = new_token(stack.redis_url, "rotating")
    with client_for(stack.base_url, token) as client:
        old = secret_of(client)
        rotated = client.post("/v1/webhooks/default/secret/rotate")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["key"]
        assert new != old and secret_of(client) == new
        assert client.get("/v1/webhooks/default/secret").json()["previous_key_expires_at"]
        with WebhookReceiver(old) as with_old, WebhookReceiver(new) as with_new:
            # During the overlap (KILN_WEBHOOK_SECRET_OVERLAP_S, 24 h here) receivers with either secret accept.
            create_with_webhook(client, with_old.url("/during"), ["completed"], **FAST)
            create_with_webhook(client, with_new.url("/during"), ["completed"], **FAST)
            wait_until(lambda: with_old.at("/during") and with_new.at("/during"), 60, what="both receivers to accept")
            assert len(with_new.at("/during")[0].headers["webhook-signature"].split(" ")) == 2
            # The overlap ends (as 24 h passing would do): only the new secret signs from then on.
            with Redis.from_url(stack.redis_url) as redis_client:
                tenant = tenant_of(token_digest(token))
                redis_client.hset(keys.webhook_secret(tenant), "previous_until", repr(time.time() - 1))
            assert "previous_key_expires_at" not in client.get("/v1/webhooks/default/secret").json()
            create_with_webhook(client, with_old.url("/after"), ["completed"], **FAST)
            create_with_webhook(client, with_new.url("/after"), ["completed"], **FAST)
            wait_until(lambda: with_new.at("/after"), 60, what="the new secret's receiver to accept")
            wait_until(lambda: with_old.bad_signatures >= 1, 30, what="the old secret's receiver to reject")
            assert with_old.at("/after") == []
            assert len(with_new.at("/after")[0].headers["webhook-signature"].split(" ")) == 1


def output_query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def test_output_urls_expire_and_the_owner_still_fetches(stack, client, other_client):
    done = wait_for_status(client, create(client, **FAST)["id"], TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    url = done["output"][0]
    expires = int(output_query(url)["expires"])
    retention_end = time.time() + 3600  # KILN_RETENTION_S in the stack: the default
    assert time.time() + 0.9 * 3600 - 5 <= expires <= retention_end
    path = urlsplit(url).path
    with Redis.from_url(stack.redis_url) as redis_client:
        signer = UrlSigner(url_signing_secret(stack.settings(), redis_client), 3600)
    expired = signer.url(stack.base_url, path, now=time.time() - 7200)
    with stack.client(None) as anonymous:
        assert anonymous.get(url).status_code == 200
        problem = assert_problem(anonymous.get(expired), 403, "expired", "KILN_OUTPUT_URL_TTL_S")
        assert "fresh" in problem["detail"]
        assert_problem(other_client.get(expired), 403, "expired")
        # Every read renders a fresh URL, which works again.
        fresh = client.get(f"/v1/predictions/{done['id']}").json()["output"][0]
        assert anonymous.get(fresh).status_code == 200
        listed = {p["id"]: p for p in client.get("/v1/predictions").json()["results"]}
        assert anonymous.get(listed[done["id"]]["output"][0]).status_code == 200
    # The owner's token fetches with the expired URL, and without any signature.
    assert client.get(expired).status_code == 200
    assert client.get(path).content.startswith(b"\x89PNG")


def test_a_token_made_at_run_time_works_at_once_and_a_revoked_one_is_refused_at_once(stack):
    env = stack.env | {"KILN_REDIS_URL": stack.redis_url, "KILN_API_TOKEN": stack.env["KILN_API_TOKEN"]}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python(), "-m", "shared.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )

    name = f"ops-{int(time.time() * 1000)}"
    made = kiln("tokens", "create", name, "--rate-limit-per-s", "20")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("kiln_") and len(made.stdout.splitlines()) == 1
    listed = kiln("tokens", "list")
    assert name in listed.stdout and "rate_limit_per_s=20" in listed.stdout and token not in listed.stdout
    with Redis.from_url(stack.redis_url) as redis_client:  # stored hashed: its digest, never the token
        record = redis_client.hgetall(keys.token(token_digest(token)))
        assert record[b"name"] == name.encode() and token.encode() not in b"".join(record.values())
        assert redis_client.hget(keys.token_names(), name) == token_digest(token).encode()
    api_processes = [stack.base_url, stack.tls_base_url]
    for base in api_processes:
        with client_for(base, token, verify=ssl.create_default_context(cafile=str(stack.tls_ca))) as client:
            assert client.get("/v1/predictions").status_code == 200
    revoked = kiln("tokens", "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    for base in api_processes:  # the very next request, in every API process
        with client_for(base, token, verify=ssl.create_default_context(cafile=str(stack.tls_ca))) as client:
            assert_problem(client.get("/v1/predictions"), 401, "revoked")
    assert name not in kiln("tokens", "list").stdout
    assert kiln("tokens", "revoke", name).returncode == 1


def test_a_bootstrap_token_can_be_revoked_too(stack):
    token = f"boot-{time.time_ns()}"
    with app_for(stack, api_token=f"bootstrap-test={token}") as app:
        auth = {"Authorization": f"Bearer {token}"}
        assert app.get("/v1/predictions", headers=auth).status_code == 200
        env = stack.env | {"KILN_REDIS_URL": stack.redis_url, "KILN_API_TOKEN": f"bootstrap-test={token}"}
        listed = subprocess.run(
            [python(), "-m", "shared.cli", "tokens", "list"], env=env, cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert "bootstrap-test" in listed.stdout and "KILN_API_TOKEN" in listed.stdout
        revoke = subprocess.run(
            [python(), "-m", "shared.cli", "tokens", "revoke", "bootstrap-test"], env=env, cwd=REPO_ROOT
        )
        assert revoke.returncode == 0
        assert_problem(app.get("/v1/predictions", headers=auth), 401, "revoked")
    # Still refused after a restart with the same KILN_API_TOKEN.
    with app_for(stack, api_token=f"bootstrap-test={token}") as restarted:
        assert restarted.get("/v1/predictions", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_kiln_tokens_sees_the_running_apis_bootstrap_tokens_without_its_environment(stack):
    name, token = f"boot-{time.time_ns()}", secrets.token_urlsafe(16)
    # The CLI has the stack's Redis but not the API's KILN_API_TOKEN, as after `make run`.
    env = {k: v for k, v in stack.env.items() if k != "KILN_API_TOKEN"} | {"KILN_REDIS_URL": stack.redis_url}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python(), "-m", "shared.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )

    with app_for(stack, api_token=f"{name}={token}") as app:
        assert app.get("/v1/predictions", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        listed = kiln("tokens", "list")
        assert listed.returncode == 0 and f"{name}  source=KILN_API_TOKEN" in listed.stdout, listed
        assert token not in listed.stdout
        clash = kiln("tokens", "create", name)
        assert clash.returncode == 1 and name in clash.stderr and "KILN_API_TOKEN" in clash.stderr, clash
        assert clash.stdout == ""
        with Redis.from_url(stack.redis_url) as redis_client:
            assert redis_client.hget(keys.token_names(), name) is None
        # Two creates of one new name at once: one wins.
        racing = f"race-{time.time_ns()}"
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: kiln("tokens", "create", racing), range(4)))
        assert sorted(o.returncode for o in outcomes) == [0, 1, 1, 1], outcomes
        assert kiln("tokens", "list").stdout.count(f"{racing}  source=kiln tokens") == 1


def test_a_tokens_own_limits_apply_to_it_alone(stack, client):
    _, slow = new_token(stack.redis_url, "slow", rate_limit_per_s=0.2, rate_limit_burst=2)
    with client_for(stack.base_url, slow) as slow_client:
        assert [slow_client.get("/v1/queue").status_code for _ in range(2)] == [200, 200]
        refused = slow_client.get("/v1/queue")
        assert_problem(refused, 429, "0.2 requests per second", "bursts of 2")
        assert int(refused.headers["retry-after"]) >= 1
    assert client.get("/v1/queue").status_code == 200  # another token's bucket is untouched

    _, capped = new_token(stack.redis_url, "capped", max_queued=1)
    with StepGate(stack.redis_url) as gate, client_for(stack.base_url, capped) as capped_client:
        # A's prediction holds the worker, so the capped token's first prediction stays queued.
        blocker = create(client, prompt=gate.prompt, num_inference_steps=500, prompt_strength=1.0, **FAST)
        wait_for_status(client, blocker["id"], {"processing"})
        body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(**FAST)}
        first = capped_client.post("/v1/predictions", json=body)
        assert first.status_code == 201, first.text
        assert_problem(capped_client.post("/v1/predictions", json=body), 429, "1 predictions queued")
        assert queued_count(capped_client) == 1
        assert client.post("/v1/predictions", json=body).status_code == 201  # A's own cap is the service's
        client.post(f"/v1/predictions/{blocker['id']}/cancel")
        wait_for_status(capped_client, first.json()["id"], TERMINAL)


def queued_count(client) -> int:
    return int(client.get("/v1/queue").json()["queued"])
