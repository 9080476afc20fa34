"""Taking in a batch (``api.intake.batch_file``) in-process against a real redis-server: a cancel while
the items are validated, an unexpected failure, JSON nested too deep, a batch over the queue cap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from api.errors import ProblemError
from api.intake import batch_file as batch_intake
from api.routes.batches import _submit
from api.schemas import CreateBatchObject
from api.services import Services
from deploy.devstack.servers import RedisServer
from shared.settings import Settings
from tests.support.predictions import depth2img_input

pytestmark = pytest.mark.integration
BASE = "http://kiln.test"
TENANT = "tenant-intake"
SD2_INPUT = depth2img_input(width=64, height=64, num_inference_steps=1, prompt_strength=1.0, seed=1)


class DeletedPrefixes:
    """Stands in for S3 where only ``delete_prefix`` is used (these batches store no image)."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_prefix(self, prefix: str) -> int:
        self.deleted.append(prefix)
        return 0


@pytest.fixture
def services(tmp_path) -> Iterator[Services]:
    with RedisServer(tmp_path / "redis") as server:
        settings = Settings(_env_file=None, redis_url=server.url, api_token="a", inline_input_max_bytes=1024 * 1024)
        services = Services.connect(settings)
        services.storage = DeletedPrefixes()  # type: ignore[assignment]
        yield services
        services.redis.close()


def lines(count: int) -> list[tuple[int, bytes]]:
    items = [{"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"seed": i}} for i in range(count)]
    return [(n, orjson.dumps(body)) for n, body in enumerate(items, start=1)]


def create(services: Services, items: list[tuple[int, bytes]], tenant_cap: int = 100_000) -> Any:
    return batch_intake.create_batch(services, TENANT, iter(items), len(items), BASE, None, "inline", tenant_cap)


def test_a_cancel_while_validating_stores_no_item(services, monkeypatch):
    real = batch_intake._validate_one
    seen: list[int] = []

    def cancel_midway(*args: Any) -> Any:
        seen.append(1)
        if len(seen) == batch_intake.CANCEL_CHECK_EVERY // 2:
            (batch,), _ = services.batches.list_for_tenant(TENANT)
            services.batches.flag_cancel(batch.id)  # what POST .../cancel does first
        return real(*args)

    monkeypatch.setattr(batch_intake, "_validate_one", cancel_midway)
    batch = create(services, lines(3 * batch_intake.CANCEL_CHECK_EVERY))
    assert len(seen) < 2 * batch_intake.CANCEL_CHECK_EVERY, "validation stopped soon after the cancel"
    assert batch.status == "canceled" and batch.total == 0
    assert services.batches.item_count(batch.id) == 0
    assert services.store.queued.depth(TENANT).tenant == 0


def test_an_unexpected_failure_ends_the_batch_and_releases_the_idempotency_key(services, monkeypatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(batch_intake, "prepare_item", broken)
    body = CreateBatchObject(predictions=[{"version": "kiln/sd2-depth2img", "input": SD2_INPUT}])
    with pytest.raises(RuntimeError):
        _submit(services, TENANT, 100_000, body, BASE, "key-1")
    assert services.batches.list_for_tenant(TENANT)[0] == [], "no batch left validating"
    assert services.storage.deleted, "its stored inputs deleted"
    assert services.idempotency.claim(TENANT, "key-1", "another request", "b2") is None, "the key is free"


def test_a_failure_after_items_were_stored_cancels_them_and_ends_the_batch(services, monkeypatch):
    monkeypatch.setattr(batch_intake, "CHUNK", 2)
    real = batch_intake._store_chunk
    calls: list[int] = []

    def fails_second_time(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("redis went away")
        return real(*args)

    monkeypatch.setattr(batch_intake, "_store_chunk", fails_second_time)
    with pytest.raises(ConnectionError):
        create(services, lines(4))
    (batch,), _ = services.batches.list_for_tenant(TENANT)
    assert batch.status == "canceled" and batch.total == 2 and batch.counts.get("canceled") == 2
    assert services.store.queued.depth(TENANT).tenant == 0


def test_a_line_nested_too_deep_is_refused_alone(services):
    deep = (3, b'{"version": "kiln/sd2-depth2img", "input": {"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}}")
    batch = create(services, [*lines(2), deep, (4, b"[" * 100_000)])
    refused = [e for e in services.batches.items(batch.id, 0, 10) if not isinstance(e, str)]
    assert [r.line for r in refused] == [3, 4]
    assert all("nested deeper than 64" in r.problem["detail"] for r in refused)
    assert batch.refused == 2 and batch.counts == {"starting": 2}


def test_a_batch_over_the_queue_cap_itself_can_never_fit(services):
    with pytest.raises(ProblemError) as refused:
        create(services, lines(4), tenant_cap=3)
    assert refused.value.status == 422 and "Retry-After" not in (refused.value.headers or {})
    assert "4 predictions" in refused.value.detail and "at most 3" in refused.value.detail
    assert services.batches.list_for_tenant(TENANT)[0] == []
