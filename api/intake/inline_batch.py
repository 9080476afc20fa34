"""``POST /v1/predictions/batch``: many creates in one request, each item validated on its own.

Valid items are stored and enqueued in one Redis transaction (batch priority, behind single
creates); the answer lists, in order, each created prediction or the problem with its item. The
batch is admitted against the queue caps whole or not at all.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError

from api.errors import ProblemError, input_validation_problem, problem_body, reject_invalid_text
from api.intake.file_checks import check_file_inputs
from api.intake.idempotency import TTL_S, await_first_request, fingerprint
from api.intake.image_staging import RequestImages, stage_images
from api.intake.inputs import check_input
from api.intake.submission import confirm_replicated, deadline_after, prepare, store_and_enqueue, with_priority
from api.schemas import CreateInBatch
from api.services import Services
from models.registry import UnknownModelError, find_model, resolve_version
from shared.db import keys
from shared.model_spec import ModelSpec
from shared.predictions.record import Prediction, new_id
from shared.scheduling import queues
from shared.scheduling.queues import Priority


def _model_of(item: CreateInBatch, services: Services) -> ModelSpec:
    if (item.version is None) == (item.model is None):
        raise ProblemError(422, "give exactly one of version (a version id, owner/name or owner/name:id) or model")
    try:
        if item.version:
            return resolve_version(item.version, services.settings)
        assert item.model is not None  # exactly one of the two is given (checked above)
        return find_model(item.model, services.settings)
    except UnknownModelError as exc:
        raise ProblemError(422, f"{'version' if item.version else 'model'}: {exc}") from None


def prepare_item(
    services: Services,
    tenant: str,
    raw: dict[str, Any],
    base_url: str,
    images: RequestImages | set[str],
    priority: Priority = "normal",
    deadline: datetime | None = None,
) -> Prediction:
    """One item as a prediction ready to store (``priority``: the batch's, for an item that names none;
    ``deadline``: the batch's ``Cancel-After``);
    ``ProblemError`` says what is wrong with it (text that is not valid Unicode first: the body model's
    validator looks for it before any field is read)."""
    try:
        item = CreateInBatch.model_validate(raw)
    except ValidationError as exc:
        raise input_validation_problem(exc, prefix=()) from None
    spec = _model_of(item, services)
    return prepare(services, tenant, spec, item, base_url, images, deadline=deadline, priority=priority)


def item_spec(services: Services, raw: dict[str, Any]) -> ModelSpec:
    """The model an item that ``prepare_item`` took names (``version`` or ``model``)."""
    return _model_of(CreateInBatch.model_validate(raw), services)


def prepare_item_input(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    raw: dict[str, Any],
    base_url: str,
    images: RequestImages,
    *,
    text_checked: bool = False,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The input (as stored) and ``input_files`` of a batch item whose other fields are those of an item
    ``prepare_item`` took (the same model, webhook, priority, ...: ``spec`` is its model), with the same
    checks in the same order as ``prepare_item`` makes, less those of the fields already found good: so
    the same problem for a bad input, at a fraction of the cost (no create body or prediction is built).
    Only for a batch object's items (``images.batch_id``): their images are stored for the batch.
    ``text_checked``: ``raw`` is known to hold valid Unicode only (orjson parsed it), so it is not walked
    for lone surrogates again (``reject_invalid_text``: ~8 % of a line's checks)."""
    assert images.batch_id is not None  # an item's own images would be stored under its id
    if not text_checked:
        reject_invalid_text(raw)
    inputs, found = check_input(spec, raw["input"], services, tenant, base_url, images.checked)
    check_file_inputs(spec, inputs, services, tenant, base_url, images.file_headers)
    return stage_images(spec, inputs, services, tenant, "", base_url, images, found)


def submit_batch(
    services: Services,
    tenant: str,
    items: list[dict[str, Any]],
    base_url: str,
    idempotency_key: str | None,
    tenant_cap: int | None = None,
    priority: Priority = "normal",
    cancel_after: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Create the batch (or replay it, for a repeated Idempotency-Key); returns the rendered results
    and whether they were created now. ``priority``: the batch's, for the items that name none;
    ``cancel_after``: its ``Cancel-After`` header, every item's deadline."""
    limit = services.settings.batch_max_items
    if len(items) > limit:
        raise ProblemError(422, f"predictions: {len(items)} items, at most {limit} per batch (KILN_BATCH_MAX_ITEMS)")
    if not items:
        raise ProblemError(422, "predictions: no items: a batch holds at least one create body")
    deadline = deadline_after(cancel_after)
    batch_id = new_id()
    if idempotency_key is not None:
        request = fingerprint("batch", with_priority({"predictions": items}, priority))
        existing = services.idempotency.claim(
            tenant, idempotency_key, request, batch_id, lambda bid: bool(services.redis.exists(keys.batch(bid)))
        )
        if existing is not None:
            replayed = _replay(services, existing, base_url)
            confirm_replicated(services)
            return replayed, False
    with services.idempotency.released_on_failure(tenant, idempotency_key):
        results = _create(services, tenant, items, base_url, tenant_cap, priority, deadline)
    entries = [{"id": r.id} if isinstance(r, Prediction) else {"problem": r} for r in results]
    if idempotency_key is not None:
        services.redis.set(keys.batch(batch_id), json.dumps(entries), ex=TTL_S)
    created = [r.id for r in results if isinstance(r, Prediction)]
    confirm_replicated(services, lambda: len(services.store.get_many(created)) == len(created))
    return _rendered(services, results, base_url), True


def _rendered(services: Services, results: list[Prediction | dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """Each prediction as clients see it (its queue position read with the others'), or its problem."""
    rendered = iter(services.render_many([r for r in results if isinstance(r, Prediction)], base_url))
    return [next(rendered) if isinstance(r, Prediction) else r for r in results]


def _create(
    services: Services,
    tenant: str,
    items: list[dict[str, Any]],
    base_url: str,
    tenant_cap: int | None,
    priority: Priority,
    deadline: datetime | None,
) -> list[Prediction | dict[str, Any]]:
    results: list[Prediction | dict[str, Any]] = []
    images = RequestImages()  # images of this batch: each checked and uploaded once
    for raw in items:
        try:
            results.append(prepare_item(services, tenant, raw, base_url, images, priority, deadline))
        except ProblemError as exc:
            results.append(problem_body(exc.status, exc.detail, **exc.extra))
    valid = [r for r in results if isinstance(r, Prediction)]
    if valid:
        store_and_enqueue(services, valid, queues.PRIORITY_BATCH, tenant_cap)
    return results


def _replay(services: Services, batch_id: str, base_url: str) -> list[dict[str, Any]]:
    """The first request's results, with each prediction as it is now."""
    stored = await_first_request(lambda: cast("bytes | None", services.redis.get(keys.batch(batch_id))), "a batch")
    entries = json.loads(stored)
    found = {p.id: p for p in services.store.get_many([e["id"] for e in entries if "id" in e])}
    kept = [found[e["id"]] if "id" in e else e["problem"] for e in entries if "problem" in e or e["id"] in found]
    return _rendered(services, kept, base_url)
