"""A batch file's image URLs fetched ahead (``api.intake.fetch_ahead``), on the real stack's Redis and S3 and
a loopback image server: the lines are found as when each line fetched its own URLs, each URL is fetched
once, and a URL that cannot be fetched refuses the lines naming it with the problem a line's own fetch gives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from api.intake import batch_file
from api.services import Services
from deploy.devstack.servers import free_port
from shared.batches.records import RefusedItem
from tests.support.image_servers import ImageServer
from tests.support.predictions import xl_input

pytestmark = pytest.mark.integration
BASE = "http://kiln.test"
TENANT = "tenant-fetch-ahead"


@pytest.fixture
def services(stack) -> Iterator[Services]:
    services = Services.connect(stack.settings(image_fetch_allow_private=True, image_fetch_timeout_s=5))
    yield services
    services.redis.close()


def lines(image_urls: list[str]) -> list[tuple[int, bytes]]:
    """A line per URL, then a line per URL again (its image already read), each with its own seed."""
    bodies = [
        {"model": "kiln/ip-adapter-depth-xl", "input": xl_input(input_image=url, ip_image=url, seed=n)}
        for n, url in enumerate(image_urls * 2)
    ]
    return [(n, orjson.dumps(body)) for n, body in enumerate(bodies, start=1)]


def found(validated: batch_file.Validated) -> list[Any]:
    """What each line was found to be, less what differs between two validations (``created_at``)."""
    return [
        entry.problem
        if isinstance(entry, RefusedItem)
        else ({k: v for k, v in validated.templates[entry].fields.items() if k != "created_at"}, own)
        for entry, own in zip(validated.entries, validated.own, strict=True)
    ]


def test_lines_are_found_as_when_each_fetched_its_own_and_each_url_is_fetched_once(services, monkeypatch):
    unreachable = f"http://127.0.0.1:{free_port()}/gone.png"
    with ImageServer("127.0.0.1") as server:
        urls = [server.url(f"/img/{n}.png") for n in range(20)]
        items = lines([*urls[:10], unreachable, *urls[10:]])
        ahead = batch_file.validate_items(services, TENANT, "batch-fetch-ahead", items, BASE)
        assert server.hits == len(urls)
        monkeypatch.setattr(batch_file, "_fetch_ahead", lambda *args: None)
        one_by_one = batch_file.validate_items(services, TENANT, "batch-fetch-ahead", items, BASE)
        assert server.hits == 2 * len(urls)
    assert found(ahead) == found(one_by_one)
    refused = [entry for entry in ahead.entries if isinstance(entry, RefusedItem)]
    assert [entry.line for entry in refused] == [11, 32], "the unreachable URL's two lines, alone"
    assert "input.input_image" in refused[0].problem["detail"] and "failed" in refused[0].problem["detail"]


def test_only_urls_where_the_model_takes_an_image_are_fetched_ahead(services):
    with ImageServer("127.0.0.1") as server:
        image = server.url("/img/1.png")
        not_an_image = server.url("/notes.txt")
        body = {"model": "kiln/ip-adapter-depth-xl", "input": xl_input(input_image=image, ip_image=image)}
        body["input"]["prompt"] = not_an_image
        ahead = batch_file._fetch_ahead(services, [(1, orjson.dumps(body))], BASE)
        assert ahead is not None
        assert [url for _, url in ahead._wanted] == [image]
        assert server.hits == 0, "found, not fetched, before the lines are checked"
