"""The SSRF guard in the API, on the real stack's Redis and S3: image URLs, webhooks, LoRA and embedding URLs
that reach anything but globally routable addresses are a 422, IPv4 carried in IPv6 included (the table
of addresses is in tests/support/addresses.py; tests/worker/test_ssrf_guards.py checks every outbound path gives its
verdict), and an https image URL that redirects to plain http is a 422. The in-process API here may
connect to loopback only, so a guard that failed could send nothing off the machine."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator

import pytest
import trustme
from fastapi.testclient import TestClient

from tests.support import assert_problem
from tests.support.image_servers import ImageServer, trust_in_the_guard
from tests.support.predictions import app_for, depth2img_input, xl_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
REFUSED = [
    "http://100.100.100.200/latest/meta-data/",  # a cloud metadata address, in 100.64.0.0/10
    "http://100.64.0.1/x.png",
    "http://[2002:a9fe:a9fe::1]/x.png",  # 6to4 of 169.254.169.254
    "http://[2002:a00:1::1]/x.png",  # 6to4 of 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/x.png",  # NAT64 of 169.254.169.254
    "http://[::ffff:a9fe:a9fe]/x.png",  # IPv4-mapped
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/x.png",  # Teredo of 10.0.0.1
    "http://2852039166/x.png",  # 169.254.169.254 as one number
    # Not globally reachable, though older ipaddress.is_global said so (or says so on this Python).
    "http://192.0.0.8/x.png",
    "http://192.0.0.11/x.png",
    "http://192.0.0.100/x.png",
    "http://192.0.0.200/x.png",
    "http://192.0.0.255/x.png",
    "http://[::ffff:192.0.0.8]/x.png",
    "http://[64:ff9b::c000:8]/x.png",  # NAT64 of 192.0.0.8
    "http://[2002:c000:8::]/x.png",  # 6to4 of 192.0.0.8
    "http://[::ffff:0:7f00:1]/x.png",  # IPv4-translated 127.0.0.1
    "http://[3fff::1]/x.png",  # documentation
    "http://[5f00::1]/x.png",  # SRv6 SIDs
]


@pytest.fixture
def loopback_only(monkeypatch) -> list[object]:
    """Sockets of this process may connect to loopback only: a guard that let an address through
    finds no route (and the test sees the attempt) instead of sending traffic off the machine."""
    attempts: list[object] = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            attempts.append(address)
            raise OSError(errno.ENETUNREACH, f"loopback only in this test: {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.fixture(scope="module")
def guarded_app(stack) -> Iterator[TestClient]:
    """One in-process API for every address of the table (its batch-intake process starts once),
    fetching images from and sending webhooks to globally routable addresses only."""
    with app_for(stack, image_fetch_allow_private=False, webhook_allow_private=False) as app:
        yield app


@pytest.mark.parametrize("url", REFUSED)
def test_image_urls_to_non_global_addresses_are_refused(guarded_app, loopback_only, url):
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=url)}
    response = guarded_app.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert_problem(response, 422, "input.input_image", "not globally routable")
    assert loopback_only == []


@pytest.mark.parametrize("url", REFUSED)
def test_webhooks_to_non_global_addresses_are_refused(guarded_app, loopback_only, url):
    hook = url.replace("x.png", "hook")
    single = {"version": "kiln/sd2-depth2img", "input": depth2img_input(), "webhook": hook}
    batch = {"predictions": [{"version": "kiln/sd2-depth2img", "input": depth2img_input()}], "webhook": hook}
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    responses = [guarded_app.post("/v1/predictions", json=single, headers=headers)]
    responses.append(guarded_app.post("/v1/batches", json=batch, headers=headers))
    for response in responses:
        assert_problem(response, 422, "webhook", "not globally routable")
    assert loopback_only == []


@pytest.mark.parametrize("field", ["lora_weights", "ip_embeddings"])
@pytest.mark.parametrize("url", REFUSED)
def test_lora_and_embedding_urls_to_non_global_addresses_are_refused(guarded_app, loopback_only, url, field):
    """The same judgement for the safetensors file inputs (LoRA weights, saved embeddings), over https so
    the address is what refuses them."""
    remote = url.replace("http://", "https://").replace("x.png", "weights.safetensors")
    inputs = xl_input(**{field: remote})
    if field == "ip_embeddings":  # in place of the image prompt
        del inputs["ip_image"]
    body = {"version": "kiln/ip-adapter-depth-xl", "input": inputs}
    response = guarded_app.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert_problem(response, 422, f"input.{field}", "not globally routable")
    assert loopback_only == []


def test_an_image_url_redirecting_from_https_to_http_is_a_422_and_never_fetched(stack, monkeypatch):
    """Both servers are on loopback (local development allows it); the guard's client trusts the
    test CA as a deployment's trusts the public ones."""
    ca = trustme.CA()
    trust_in_the_guard(monkeypatch, ca)
    with ImageServer("127.0.0.1", tls=ca) as redirector, ImageServer("127.0.0.1") as plain:
        redirector.redirect_to = plain.url("/x.png")
        body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=redirector.url("/x.png"))}
        with app_for(stack, image_fetch_allow_private=True) as app:
            response = app.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert_problem(response, 422, "input.input_image", "a redirect may not leave https")
        assert (redirector.hits, plain.hits) == (1, 0)


# ``localhost`` in fullwidth letters: UTS 46 maps it to ``localhost`` (the host httpx would have put in a
# Unicode Host header, a 500).
FULLWIDTH_LOCALHOST = "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"


@pytest.mark.parametrize(
    ("address", "named", "host_header"),
    [("127.0.0.1", FULLWIDTH_LOCALHOST, "localhost"), ("::1", None, "[::1]")],
    ids=["internationalized-name", "ipv6-literal"],
)
def test_an_image_url_is_fetched_with_the_host_header_the_wire_takes(stack, address, named, host_header):
    """An internationalized name is sent in its IDNA form, an IPv6 literal bracketed (RFC 9110)."""
    with ImageServer(address) as server, app_for(stack, image_fetch_allow_private=True) as app:
        body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=server.url("/x.png", named))}
        response = app.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert response.status_code == 201, response.text
        assert server.hosts == [f"{host_header}:{server.port}"]


def test_port_0_is_refused_never_replaced_by_the_schemes_default(stack):
    """Port 0 read as absent sent image fetches and webhooks to port 80."""
    with app_for(stack, image_fetch_allow_private=True, webhook_allow_private=True) as app:
        image = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image="http://127.0.0.1:0/x.png")}
        response = app.post("/v1/predictions", json=image, headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert_problem(response, 422, "input.input_image", "invalid port")
        hook = {"version": "kiln/sd2-depth2img", "input": depth2img_input(), "webhook": "http://127.0.0.1:0/hook"}
        response = app.post("/v1/predictions", json=hook, headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert_problem(response, 422, "webhook", "invalid port")
