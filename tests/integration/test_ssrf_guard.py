"""The SSRF guard in a real API process (issue 15): image URLs and webhooks that reach anything but
globally routable addresses are a 422, IPv4 carried in IPv6 included (the table of addresses is in
tests/unit/test_ssrf.py)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import TOKEN_A
from tests.support import assert_problem
from tests.support.predictions import app_for, depth2img_input

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
]


@pytest.mark.parametrize("url", REFUSED)
def test_image_urls_to_non_global_addresses_are_refused(client, url):
    body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(input_image=url)}
    assert_problem(client.post("/v1/predictions", json=body), 422, "input.input_image", "not globally routable")


@pytest.mark.parametrize("url", REFUSED)
def test_webhooks_to_non_global_addresses_are_refused(stack, url):
    with app_for(stack, webhook_allow_private=False) as app:
        body = {"version": "kiln/sd2-depth2img", "input": depth2img_input(), "webhook": url.replace("x.png", "hook")}
        response = app.post("/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert_problem(response, 422, "webhook:", "not globally routable")
