"""Webhook signing (a secret per tenant, rotation with an overlap), signed expiring URLs, and the SSRF guard."""

from __future__ import annotations

import ipaddress
import socket
import time
from datetime import UTC, datetime

import fakeredis
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.security.server_secrets import url_signing_secret
from shared.security.signed_urls import UrlSigner, Verdict
from shared.security.ssrf import URLRefused, forbidden_reason, resolve_checked
from shared.settings import Settings
from shared.webhooks.secrets import WebhookSecrets, new_webhook_secret
from shared.webhooks.signing import signature_headers

BODY = '{"id": "abc", "status": "succeeded"}'


def test_signatures_verify_with_the_standardwebhooks_library():
    secret = new_webhook_secret()
    headers = signature_headers([secret], "msg_1", datetime.now(UTC), BODY)
    assert Webhook(secret).verify(BODY, headers) == {"id": "abc", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, headers)


def test_each_tenant_has_its_own_secret_and_cannot_sign_for_another():
    secrets = WebhookSecrets(fakeredis.FakeRedis(), overlap_s=60)
    a, b = secrets.get("tenant-a").current, secrets.get("tenant-b").current
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b
    assert secrets.get("tenant-a").current == a, "kept, not made anew"
    forged = signature_headers([b], "msg_1", datetime.now(UTC), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(a).verify(BODY, forged)


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends():
    secrets = WebhookSecrets(fakeredis.FakeRedis(), overlap_s=60)
    old = secrets.get("t").current
    rotated = secrets.rotate("t")
    assert rotated.current != old and rotated.previous == old
    keys_now = secrets.signing_keys("t")
    assert keys_now == [rotated.current, old]
    headers = signature_headers(keys_now, "msg_1", datetime.now(UTC), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for receiver_secret in (old, rotated.current):  # a receiver with either secret accepts it
        assert Webhook(receiver_secret).verify(BODY, headers)["id"] == "abc"
    assert secrets.get("t").signing_keys(now=time.time() + 61) == [rotated.current]


def test_the_url_signing_secret_is_generated_once_and_kept():
    redis = fakeredis.FakeRedis()
    generated = url_signing_secret(Settings(_env_file=None), redis)
    assert generated and url_signing_secret(Settings(_env_file=None), redis) == generated
    assert url_signing_secret(Settings(_env_file=None, url_signing_secret="mine"), redis) == "mine"


PATH = "/v1/predictions/p/output/out-0.png"


def query_of(url: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))


def test_signed_urls_verify_only_for_the_same_path_secret_and_expiry():
    signer = UrlSigner("k1", ttl_s=3600)
    query = query_of(signer.url("http://kiln.test", PATH, now=1000))
    assert signer.check(PATH, now=1000, **query) is Verdict.VALID
    assert signer.check(PATH.replace("out-0", "out-1"), now=1000, **query) is Verdict.INVALID
    assert UrlSigner("k2", ttl_s=3600).check(PATH, now=1000, **query) is Verdict.INVALID
    later = str(int(query["expires"]) + 3600)
    assert signer.check(PATH, now=1000, expires=later, sig=query["sig"]) is Verdict.INVALID
    assert signer.check(PATH, now=1000, expires=None, sig=None) is Verdict.MISSING
    for sig, expires in (("é" * 32, query["expires"]), (query["sig"], "１２"), (query["sig"], "-1"), ("", "")):
        assert signer.check(PATH, now=1000, expires=expires, sig=sig) is Verdict.INVALID
    # Past the digits int() reads (4,300), and one past what any expiry needs: refused, not an error.
    for expires in ("9" * 5000, "1" + "0" * 12):
        assert signer.check(PATH, now=1000, expires=expires, sig=query["sig"]) is Verdict.INVALID


def test_signed_urls_expire_within_their_lifetime_and_never_after_not_after():
    signer = UrlSigner("k", ttl_s=3600)
    expires = int(query_of(signer.url("", PATH, now=1000))["expires"])
    assert 1000 + 0.9 * 3600 <= expires <= 1000 + 3600
    query = query_of(signer.url("", PATH, now=1000))
    assert signer.check(PATH, now=expires - 1, **query) is Verdict.VALID
    assert signer.check(PATH, now=expires, **query) is Verdict.EXPIRED
    capped = query_of(signer.url("", PATH, now=1000, not_after=1500))
    assert capped["expires"] == "1500"
    # URLs rendered close together are the same URL.
    assert signer.url("", PATH, now=1000) == signer.url("", PATH, now=1001)


def test_the_lifetime_never_exceeds_retention():
    settings = Settings(_env_file=None, output_url_ttl_s=7200, retention_s=600, url_signing_secret="s")
    assert UrlSigner.from_settings(settings, fakeredis.FakeRedis()).ttl_s == 600


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "fe80::1",
        "224.0.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
    ],
)
def test_private_addresses_are_forbidden(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://[::1]/hook"])
def test_private_urls_are_refused_unless_allowed(url):
    with pytest.raises(URLRefused):
        resolve_checked(url, allow_private=False)
    assert resolve_checked(url, allow_private=True).address


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "http://100.100.100.200/", "http://0.0.0.0/hook"])
def test_metadata_and_other_non_private_urls_are_refused_even_when_private_ones_are_allowed(url):
    with pytest.raises(URLRefused):
        resolve_checked(url, allow_private=True)


def test_a_hostname_resolving_to_a_private_address_is_refused(monkeypatch):
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "internal.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(URLRefused, match="private"):
        resolve_checked("http://internal.example/hook", allow_private=False)


def test_resolved_url_pins_the_checked_address(monkeypatch):
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
    )
    resolved = resolve_checked("https://hooks.example/x", allow_private=False)
    assert (resolved.host, resolved.port, resolved.address) == ("hooks.example", 443, "93.184.216.34")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/", "http:///nohost"])
def test_only_http_and_https(url):
    with pytest.raises(URLRefused):
        resolve_checked(url, allow_private=True)
