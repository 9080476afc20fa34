"""Taking in a batch (``api.intake.batch_file``) in-process against a real redis-server: a cancel while
the items are validated, an unexpected failure, JSON nested too deep, a batch over the queue cap."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from api.errors import ProblemError
from api.intake import batch_file as batch_intake
from api.intake import batch_pool
from api.routes.batches import _submit
from api.schemas import CreateBatchObject
from api.services import Services
from deploy.devstack.servers import RedisServer
from models.registry import MODELS
from shared.batches.records import RefusedItem
from shared.db import keys
from shared.inputs.safetensors_files import file_fields
from shared.inputs.schema import image_fields, standalone_checks
from shared.settings import Settings
from tests.support import data_uri
from tests.support.predictions import depth2img_input, xl_input

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


def _bad_items() -> list[dict[str, Any]]:
    """Items whose other fields are good and whose input is not, each in its own way."""
    return [
        {"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"num_inference_steps": "many"}},
        {"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"no_such_field": 1}},
        {"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"input_image": data_uri(b"not an image")}},
        {"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"prompt": "\ud800"}},
        {"version": "kiln/sd2-depth2img", "input": {"prompt": "no image"}},
        {"version": "kiln/sd2-depth2img", "input": "not an object"},
    ]


def _text(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # the stdlib writes a lone surrogate as an escape


def test_an_item_checked_by_its_input_alone_is_refused_as_when_checked_whole(services):
    """After a good item, items with the same other fields have only their input checked: the problem
    with a bad one is the one a whole check (the first item of a batch) finds."""
    alone = [
        batch_intake.validate_items(services, TENANT, "b1", [(1, _text(item))], BASE).entries[0]
        for item in _bad_items()
    ]
    after_a_good_one = batch_intake.validate_items(
        services, TENANT, "b2", [lines(1)[0], *[(n, _text(item)) for n, item in enumerate(_bad_items(), 2)]], BASE
    )
    assert after_a_good_one.entries[0] == 0 and len(after_a_good_one.templates) == 1
    refused = after_a_good_one.entries[1:]
    assert all(isinstance(r, RefusedItem) for r in alone + refused)
    assert [r.problem for r in refused] == [r.problem for r in alone]  # type: ignore[union-attr]
    assert [r.line for r in refused] == list(range(2, 2 + len(alone)))  # type: ignore[union-attr]


def test_an_item_checked_by_its_input_alone_is_stored_as_when_checked_whole(services):
    validated = batch_intake.validate_items(services, TENANT, "b1", lines(3), BASE)
    assert validated.entries == [0, 0, 0]
    for seed, own in enumerate(validated.own):
        whole = batch_intake.validate_items(services, TENANT, "b1", [lines(seed + 1)[seed]], BASE)
        assert own == whole.own[0] and orjson.loads(own.input)["seed"] == seed
        assert _without_created_at(whole.templates[0]) == _without_created_at(validated.templates[0])


def _without_created_at(template: batch_intake.Template) -> dict[str, bytes]:
    return {name: value for name, value in template.fields.items() if name != "created_at"}


@pytest.fixture
def helper(services, monkeypatch) -> Iterator[None]:
    """An intake process's helper process, and files large enough to be shared with it."""
    pool = batch_pool.helper_pool(services.settings)
    monkeypatch.setattr(batch_pool, "_helper", pool)
    monkeypatch.setattr(batch_intake, "SHARE_FROM", 4)
    yield
    pool.shutdown()


def test_a_file_shared_with_the_helper_process_is_validated_as_one_process_validates_it(services, helper):
    items = [
        *lines(5),
        (6, b"not json"),
        (7, _text({"version": "kiln/no-such-model", "input": SD2_INPUT})),
        *[(n, _text(item)) for n, item in enumerate(_bad_items(), 8)],
        *[(n + 13, text) for n, text in lines(3)],  # the same text as lines 1-3
        (17, _text({"version": "kiln/sd2-depth2img", "input": SD2_INPUT | {"seed": 9}, "priority": "low"})),
    ]
    shared = batch_intake.validate_all(services, TENANT, "b1", items, BASE)
    alone = batch_intake.validate_items(services, TENANT, "b1", items, BASE)

    def seen(validated: batch_intake.Validated) -> list[Any]:
        return [
            entry if isinstance(entry, RefusedItem) else (_without_created_at(validated.templates[entry]), own)
            for entry, own in zip(validated.entries, validated.own, strict=True)
        ]

    assert seen(shared) == seen(alone)
    assert len(shared.templates) > len(alone.templates), "the helper validated a share"


def test_a_cancel_reaches_the_helper_process_too(services, helper):
    batch = services.batches.create(TENANT, BASE, None, "inline", 3000)
    services.batches.flag_cancel(batch.id)
    with pytest.raises(batch_intake.CanceledWhileValidating):
        batch_intake.validate_all(services, TENANT, batch.id, lines(3000), BASE, lambda: False)


def test_a_helper_that_died_is_replaced_and_its_share_checked_here(services, helper, monkeypatch):
    monkeypatch.setattr(batch_pool, "_helper_settings_of", services.settings)
    dead = batch_pool._helper
    assert dead is not None
    dead.submit(batch_pool._ready).result(timeout=120)  # its process started
    for process in list(dead._processes.values()):
        process.kill()
        process.join()
    try:
        validated = batch_intake.validate_all(services, TENANT, "b1", lines(6), BASE)
        assert validated.entries == [0] * 6 or all(isinstance(e, int) for e in validated.entries)
        assert batch_pool._helper is not dead
    finally:
        assert batch_pool._helper is not None
        batch_pool._helper.shutdown()


def test_a_validated_share_crosses_processes_whole() -> None:
    # A helper's share comes back pickled as plain lists (``Validated.__reduce__``).
    template = batch_intake.Template("sd2", "kiln/sd2-depth2img", {"version": b'"v"'})
    refused = RefusedItem(2, {"status": 422, "detail": "bad"})
    own = [
        batch_intake.OwnFields(b'{"seed":1}', b'{"image":"f"}'),
        batch_intake._NO_FIELDS,
        batch_intake.OwnFields(b"{}"),
    ]
    validated = batch_intake.Validated([0, refused, 0], [template], own)
    again = pickle.loads(pickle.dumps(validated))
    assert (again.entries, again.templates, again.own) == ([0, refused, 0], [template], own)


def test_a_share_crosses_to_the_helper_in_a_private_file_deleted_after(services, helper, monkeypatch):
    handed: list[tuple[str, int]] = []
    original = batch_pool.handed_over

    @contextmanager
    def watched(value: Any) -> Iterator[str]:
        with original(value) as path:
            handed.append((path, os.stat(path).st_mode & 0o777))
            yield path

    monkeypatch.setattr(batch_intake, "handed_over", watched)
    validated = batch_intake.validate_all(services, TENANT, "b1", lines(6), BASE)
    assert [isinstance(entry, int) for entry in validated.entries] == [True] * 6
    assert len(validated.templates) == 2, "the helper validated its share"
    [(path, mode)] = handed
    assert mode == 0o600
    assert not os.path.exists(path)


def test_a_share_is_deleted_once_the_helper_has_read_it(tmp_path):
    with batch_pool.handed_over([(1, b"{}")]) as path:
        assert batch_pool.taken(path) == [(1, b"{}")]
        assert not os.path.exists(path), "gone before its intake process is done with the batch"


def test_the_processes_import_at_start_what_their_first_work_runs():
    # Importing it on a first 100,000-line file's share took the helper 0.2-0.3 s while its intake waited.
    assert batch_intake._validate_share.__module__ in batch_pool.HELPER_MODULES
    assert _submit.__module__ in batch_pool.INTAKE_MODULES


def test_a_cancel_while_a_chunk_is_stored_stores_no_later_chunk_and_cancels_that_one(services, monkeypatch):
    # Each chunk is stored while the next is prepared: a cancel seen after one is stored still stops there.
    monkeypatch.setattr(batch_intake, "CHUNK", 2)
    asked = 0
    real = services.batches.cancel_requested

    def canceled_after_the_first_chunk(batch_id: str) -> bool:
        nonlocal asked
        asked += 1
        if asked == 2:  # before the first chunk, then after it
            services.batches.flag_cancel(batch_id)
        return real(batch_id)

    monkeypatch.setattr(services.batches, "cancel_requested", canceled_after_the_first_chunk)
    batch = create(services, lines(6))
    assert batch.status == "canceled" and batch.total == 2
    assert batch.counts.get("canceled") == 2
    assert services.store.queued.depth(TENANT).tenant == 0
    assert len(services.redis.zrange(keys.tenant_predictions(TENANT), 0, -1)) == 2


def test_a_share_that_cannot_be_written_is_checked_here_alone(services, helper, monkeypatch):
    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch_pool.tempfile, "mkstemp", full_disk)
    items = [*lines(5), (6, b"not json")]
    validated = batch_intake.validate_all(services, TENANT, "b1", items, BASE)
    assert validated.entries[:5] == [0] * 5 and isinstance(validated.entries[5], RefusedItem)
    assert len(validated.templates) == 1, "one process validated every line"


# Values a line may give its model's standalone fields (``ModelInput.standalone_fields``): good ones, ones
# the model coerces, and ones it refuses.
_STANDALONE_VALUES: dict[str, list[Any]] = {
    "prompt": ["a fox at dusk", "", "x" * 10_001, None, 7, ["a fox"], "été, 東京"],
    "negative_prompt": ["blurry", None, "y" * 10_001, 3],
    "seed": [0, 2**32 - 1, 2**32, -1, "7", 7.0, 7.5, True, None, "seven"],
}


def _standalone_variants(base: dict[str, Any]) -> list[dict[str, Any]]:
    """``base`` with each value of each standalone field, with each one left out, and with two at once."""
    variants = [base | {name: value} for name, values in _STANDALONE_VALUES.items() for value in values]
    variants += [{field: value for field, value in base.items() if field != name} for name in ("prompt", "seed")]
    variants += [base | {"prompt": "another", "negative_prompt": "z", "seed": 3}, base | {"prompt": 1, "seed": -1}]
    return variants


@pytest.mark.parametrize("model", ["kiln/sd2-depth2img", "kiln/ip-adapter-depth-xl"])
def test_an_input_differing_only_in_standalone_fields_is_stored_or_refused_as_when_checked_whole(services, model):
    """Lines whose input differs from one found good only in its prompts and seed have those checked alone
    (``_standalone_own``): each is stored, or refused with the problem, as when it is checked whole."""
    base = SD2_INPUT if model == "kiln/sd2-depth2img" else xl_input(width=64, height=64, num_inference_steps=1)
    inputs = [base, base, *_standalone_variants(base)]
    bodies = [{"version": model, "input": given} for given in inputs]
    items = [(n, orjson.dumps(body)) for n, body in enumerate(bodies, start=1)]
    together = batch_intake.validate_items(services, TENANT, "b1", items, BASE)
    assert len(together.templates) == 1
    refused = 0
    for (line, text), entry, own in zip(items[2:], together.entries[2:], together.own[2:], strict=True):
        whole = batch_intake.validate_items(services, TENANT, "b2", [(line, text)], BASE)
        if isinstance(whole.entries[0], RefusedItem):
            refused += 1
            assert isinstance(entry, RefusedItem) and entry.problem == whole.entries[0].problem, text
        else:
            assert entry == 0 and own == whole.own[0], text
    assert 0 < refused < len(items) - 2  # both kinds were tried


def test_lines_differing_only_in_prompt_and_seed_have_the_rest_of_their_input_checked_once(services, monkeypatch):
    real = batch_intake.prepare_item_input
    checked: list[dict[str, Any]] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        checked.append(args[3]["input"])
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_intake, "prepare_item_input", counted)
    own = [SD2_INPUT | {"prompt": f"a kiln {n}", "seed": n} for n in range(1, 51)]
    items = [(n, orjson.dumps({"version": "kiln/sd2-depth2img", "input": given})) for n, given in enumerate(own, 1)]
    validated = batch_intake.validate_items(services, TENANT, "b1", items, BASE)
    assert validated.entries == [0] * 50
    assert [orjson.loads(own.input)["seed"] for own in validated.own] == list(range(1, 51))
    assert len(checked) == 1  # the second line's; the first built the template, the others only their own fields


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_models_standalone_fields_are_plain_fields_each_checked_alone(name):
    """What ``standalone_checks`` relies on: each is a field of the input, read under its own name, and
    neither an image nor a file input."""
    input_model = MODELS[name].input_model
    images = {image.path[0] for image in image_fields(input_model)}
    files = {field for field, _ in file_fields(input_model)}
    assert input_model.standalone_fields <= input_model.model_fields.keys()
    assert not input_model.standalone_fields & (images | files)
    assert standalone_checks(input_model).keys() == input_model.standalone_fields
