"""The playground's pages and assets: served by the API without a token, and nothing loaded from
anywhere else (no CDN, no external fonts or scripts)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.playground import STATIC_DIR
from shared.settings import Settings

PAGES = [
    "/",
    "/playground/models/kiln/sd2-depth2img",
    "/playground/predictions/01abc",
    "/playground/batches/01abc",
    "/playground/history",
]
# src="..." / href="..." in HTML, import ... from "..." in JS, url(...) in CSS.
REFERENCE = re.compile(r"""(?:src|href)="([^"]*)"|from\s+"([^"]+)"|url\(([^)]*)\)""")


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No lifespan: pages and static files need neither Redis nor S3.
    return TestClient(create_app(Settings(_env_file=None, api_token="t")))


def references(text: str) -> list[str]:
    return [next(group for group in match.groups() if group is not None) for match in REFERENCE.finditer(text)]


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_served_without_a_token_under_a_same_origin_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for reference in references(response.text):
        assert reference.startswith(("/", "data:")), reference
        if reference.startswith("/playground/static/"):
            assert client.get(reference).status_code == 200, reference


def test_assets_load_nothing_from_outside_the_api():
    assets = sorted(STATIC_DIR.iterdir())
    assert {asset.suffix for asset in assets} == {".html", ".js", ".css"}
    for asset in assets:
        for reference in references(asset.read_text()):
            assert not re.match(r"\s*['\"]?(https?:)?//", reference), f"{asset.name} loads {reference}"
            if asset.suffix == ".js" and reference.startswith("./"):
                assert (STATIC_DIR / reference).is_file(), f"{asset.name} imports a missing {reference}"
