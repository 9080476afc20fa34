"""Webhook signing round trip and the SSRF guard."""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime

import fakeredis
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.secrets import new_webhook_secret as new_secret
from shared.secrets import sign_path, url_signing_secret, verify_path, webhook_secret
from shared.settings import Settings
from shared.ssrf import URLRefused, forbidden_reason, resolve_checked
from shared.webhooks import signature_headers


def test_signatures_verify_with_the_standardwebhooks_library():
    secret = new_secret()
    body = '{"id": "abc", "status": "succeeded"}'
    headers = signature_headers(secret, "msg_1", datetime.now(UTC), body)
    assert Webhook(secret).verify(body, headers) == {"id": "abc", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_secret_from_settings_wins_else_one_is_generated_and_kept():
    redis = fakeredis.FakeRedis()
    configured = new_secret()
    assert webhook_secret(Settings(_env_file=None, webhook_secret=configured), redis) == configured
    generated = webhook_secret(Settings(_env_file=None), redis)
    assert generated.startswith("whsec_") and generated != configured
    assert webhook_secret(Settings(_env_file=None), redis) == generated
    assert url_signing_secret(Settings(_env_file=None), redis) not in {generated, ""}


def test_signed_paths_verify_only_for_the_same_path_and_secret():
    signature = sign_path("k1", "/v1/predictions/p/output/out-0.png")
    assert verify_path("k1", "/v1/predictions/p/output/out-0.png", signature)
    assert not verify_path("k1", "/v1/predictions/p/output/out-1.png", signature)
    assert not verify_path("k2", "/v1/predictions/p/output/out-0.png", signature)


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


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://[::1]/hook", "http://169.254.169.254/latest"]
)
def test_private_urls_are_refused_unless_allowed(url):
    with pytest.raises(URLRefused):
        resolve_checked(url, allow_private=False)
    assert resolve_checked(url, allow_private=True).address


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
