"""Taking in a batch's items (``POST /v1/batches``): inline create bodies or the lines of a JSONL file.

Each item is validated on its own with the same code as a single create (``api.intake.inline_batch.prepare_item``);
a bad item (or a line that is not JSON) becomes a refused entry with its line number and problem,
and never sinks the rest. Items with the same text are validated once: the first one's prepared
prediction is the template of the others, which differ only in their id. The batch is admitted
against the queue caps whole, then stored a chunk at a time: the chunk's compact records
(``PredictionStore.create_records``: refused whole, and drawn again, if one of its new ids is
stored), then one Redis transaction holding the tenant's index, the batch's item list and counts,
and the items' places (and queue-line tickets) in the dispatcher's lists (``shared.scheduling.dispatcher``:
its normal lane, or the low lane for low items): no Celery message is written here.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.client import Pipeline

from api.errors import ProblemError, problem_body
from api.intake.image_staging import RequestImages
from api.intake.inline_batch import prepare_item
from api.intake.submission import _queue_full_problem
from api.services import Services
from api.views.batches import cancel_batch, cancel_items
from shared.batches.records import BATCH_TTL_S, Batch, RefusedItem, invalid_entry
from shared.db import keys
from shared.db.client import AlreadyStored
from shared.inputs.json_nesting import nests_deeper_than, too_deep_problem
from shared.predictions import retention
from shared.predictions.record import Prediction, new_ids
from shared.runtime import metrics
from shared.scheduling.queue_counters import QueueFull
from shared.scheduling.queues import Priority
from shared.storage.files import file_id_from_url
from shared.storage.objects import batch_prefix

# Items stored per Redis transaction.
CHUNK = 5000
# Items validated between two looks at whether the batch was canceled meanwhile.
CANCEL_CHECK_EVERY = 500
# Draws of a chunk's ids before a collision with stored records fails the batch (each is all but
# impossible: ``shared.predictions.record.new_ids``).
ID_DRAWS = 3
# What a shared record keeps of its own: what the status scripts read (the rest is shared).
OWN_FIELDS = frozenset({"id", "status", "tenant", "queue", "batch_id", "queue_line", "queue_ticket"})

# One submitted item: its line number (from 1) and its text, or the problem found reading it.
RawItem = tuple[int, bytes]

log = logging.getLogger(__name__)


class CanceledWhileValidating(Exception):
    """The batch was canceled before its items were stored: none will be."""


@dataclass(frozen=True)
class Template:
    """A validated item that later items with the same text copy: all but the id are shared."""

    family: str
    model: str
    fields: dict[str, bytes]
    low: bool = False


@dataclass
class Validated:
    """The batch's items, in order: a template index per valid item, a refused item otherwise."""

    entries: list[int | RefusedItem] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)

    def families(self) -> list[str]:
        return [self.templates[e].family for e in self.entries if isinstance(e, int)]


def inline_items(items: list[Any]) -> Iterator[RawItem]:
    for index, item in enumerate(items, start=1):
        try:
            yield index, orjson.dumps(item)
        except TypeError:  # what orjson cannot write (an integer beyond 64 bits): the stdlib can
            yield index, json.dumps(item).encode()


def file_lines(data: bytes) -> Iterator[RawItem]:
    """The non-blank lines of a JSONL file, numbered as an editor numbers them."""
    for index, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield index, line


def validate_items(
    services: Services,
    tenant: str,
    batch_id: str,
    items: Iterable[RawItem],
    base_url: str,
    canceled: Callable[[], bool] = lambda: False,
    priority: Priority = "normal",
) -> Validated:
    """Every item checked (``priority``: the batch's, for items that name none); identical items checked
    once. Their stored images belong to the batch (``api.intake.image_staging``), so identical items
    share them with the rest of their fields. Stops with ``CanceledWhileValidating`` once ``canceled()``
    (asked every ``CANCEL_CHECK_EVERY`` items) says so."""
    found = Validated()
    cache: dict[bytes, int | RefusedItem] = {}
    images = RequestImages(batch_id=batch_id)
    for count, (line, text) in enumerate(items, start=1):
        if count % CANCEL_CHECK_EVERY == 0 and canceled():
            raise CanceledWhileValidating
        known = cache.get(text)
        if known is None:
            known = _validate_one(services, tenant, batch_id, line, text, base_url, images, found, priority)
            # Problems other than 422 (a file gone, a fetch that timed out) may not repeat.
            if isinstance(known, int) or known.problem.get("status") == 422:
                cache[text] = known
        found.entries.append(RefusedItem(line, known.problem) if isinstance(known, RefusedItem) else known)
    return found


def _validate_one(
    services: Services,
    tenant: str,
    batch_id: str,
    line: int,
    text: bytes,
    base_url: str,
    images: RequestImages,
    found: Validated,
    priority: Priority,
) -> int | RefusedItem:
    if nests_deeper_than(text):
        return RefusedItem(line, problem_body(422, too_deep_problem(f"line {line}")))
    try:
        raw = _parse(text)
    except ValueError as exc:
        return RefusedItem(line, problem_body(422, f"not JSON ({exc})"))
    if not isinstance(raw, dict):
        return RefusedItem(line, problem_body(422, "a create body must be a JSON object"))
    try:
        prediction = prepare_item(services, tenant, raw, base_url, images, priority)
    except ProblemError as exc:
        return RefusedItem(line, problem_body(exc.status, exc.detail, **exc.extra))
    prediction.batch_id = batch_id
    low = prediction.priority == "low"
    found.templates.append(Template(prediction.queue, prediction.model, _shared_fields(prediction), low))
    return len(found.templates) - 1


def _parse(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson refuses but JSON allows (integers beyond 64 bits)


def _shared_fields(prediction: Prediction) -> dict[str, bytes]:
    fields = prediction.to_compact_hash()
    fields.pop("id", None)
    return fields


def store_batch(services: Services, batch: Batch, validated: Validated, tenant_cap: int) -> None:
    """Admit the valid items against the queue caps (whole, or ``ProblemError`` with nothing stored),
    then store them a chunk at a time with the refused entries, and seal the batch. A cancel that
    arrives meanwhile wins: no later chunk is stored, and the one stored just before it is canceled
    here (the cancel itself ends those stored earlier: it reads the item list after flagging)."""
    families = validated.families()
    try:
        services.store.queued.admit(batch.tenant, families, tenant_cap, services.settings.max_queued_total)
    except QueueFull as exc:
        raise _queue_full_problem(exc, len(families)) from None
    stored: list[str] = []
    created: Counter[str] = Counter()
    cut_short = False
    try:
        _share_inputs(services, batch, validated)
        for start in range(0, len(validated.entries), CHUNK):
            if cut_short := services.batches.cancel_requested(batch.id):
                break
            ids, runs = _store_chunk(services, batch, validated, validated.entries[start : start + CHUNK])
            stored += ids
            created += runs
            if cut_short := services.batches.cancel_requested(batch.id):
                cancel_items(services, ids)
                break
    finally:
        if len(stored) < len(families):
            services.store.queued.release(batch.tenant, families[len(stored) :])
    if cut_short:
        services.batches.cut_short(batch.id)
    services.batches.seal(batch.id)
    metrics.record_created_counts(created)
    for family in set(families):
        services.dispatcher.release(family)  # both lanes


def _share_inputs(services: Services, batch: Batch, validated: Validated) -> None:
    """Items with the same text share one stored copy of their fields (``keys.batch_shared_fields``:
    the input, the version, ...); each record keeps only what the status scripts read, small enough
    for Redis's compact hash encoding."""
    uses = Counter(e for e in validated.entries if isinstance(e, int))
    with services.redis.pipeline(transaction=False) as pipe:
        for index, count in uses.items():
            template = validated.templates[index]
            long = {name: value for name, value in template.fields.items() if name not in OWN_FIELDS}
            if count < 2:
                continue
            key = keys.batch_shared_fields(batch.id, index)
            pipe.hset(key, mapping=long)  # type: ignore[arg-type]
            pipe.expire(key, services.batches.ttl_s)
            fields = {name: value for name, value in template.fields.items() if name not in long}
            validated.templates[index] = replace(template, fields=fields | {"shared_fields": orjson.dumps(key)})
        pipe.execute()


def _valid(validated: Validated) -> Iterator[int]:
    return (e for e in validated.entries if isinstance(e, int))


def _template(validated: Validated, entry: int) -> Template:
    return validated.templates[entry]


def _store_chunk(
    services: Services, batch: Batch, validated: Validated, chunk: list[int | RefusedItem]
) -> tuple[list[str], Counter[str]]:
    """Its records, then one transaction; returns the ids of the predictions it stored, and how many
    per model. Should an id drawn for it have a record already, nothing of the chunk is stored and it
    is tried with ids drawn afresh."""
    for _ in range(ID_DRAWS - 1):
        try:
            return _store_chunk_with_new_ids(services, batch, validated, chunk)
        except AlreadyStored as exc:
            log.error("batch %s: new prediction ids already stored (%s); drawing others", batch.id, exc)
    return _store_chunk_with_new_ids(services, batch, validated, chunk)


def _store_chunk_with_new_ids(
    services: Services, batch: Batch, validated: Validated, chunk: list[int | RefusedItem]
) -> tuple[list[str], Counter[str]]:
    fresh = iter(new_ids(sum(1 for entry in chunk if isinstance(entry, int))))
    entries: list[str] = []
    by_lane: dict[tuple[str, bool], list[str]] = {}
    by_template: dict[int, list[str]] = {}
    for entry in chunk:
        if isinstance(entry, RefusedItem):
            entries.append(invalid_entry(entry))
            continue
        template = _template(validated, entry)
        prediction_id = next(fresh)
        entries.append(prediction_id)
        by_lane.setdefault((template.family, template.low), []).append(prediction_id)
        by_template.setdefault(entry, []).append(prediction_id)
    stored = [i for ids in by_lane.values() for i in ids]
    runs: Counter[str] = Counter()
    for entry, ids in by_template.items():
        runs[_template(validated, entry).model] += len(ids)

    def then(pipe: Pipeline) -> None:
        if stored:
            pipe.zadd(keys.tenant_predictions(batch.tenant), dict.fromkeys(stored, 0))
        for model, count in runs.items():
            pipe.incrby(keys.model_run_count(model), count)
        services.batches.add_items_to_pipeline(pipe, batch.id, entries, len(stored), len(entries) - len(stored))
        for (family, low), lane_ids in by_lane.items():
            services.dispatcher.add_to_pipeline(pipe, family, batch.tenant, lane_ids, low=low)

    records = [
        ({k: v for k, v in _template(validated, e).fields.items() if k != "id"}, ids) for e, ids in by_template.items()
    ]
    services.store.create_records(records, then)
    return stored, runs


def read_input_file(services: Services, tenant: str, url: str, base_url: str) -> bytes:
    """The bytes of the tenant's uploaded file ``url`` names (its ``urls.get``); 422 naming ``input_file``."""
    file_id = file_id_from_url(url, base_url)
    if file_id is None:
        raise ProblemError(422, f"input_file: {url!r} is not a file URL of this API (upload it to POST /v1/files)")
    data = services.files.read(file_id, tenant)
    if data is None:
        raise ProblemError(422, f"input_file: file {file_id} does not exist or has expired")
    return data


def create_batch(
    services: Services,
    tenant: str,
    items: Iterable[RawItem],
    count: int,
    base_url: str,
    webhook: str | None,
    source: str,
    tenant_cap: int,
    batch_id: str | None = None,
    priority: Priority = "normal",
) -> Batch:
    """Validate, admit, store and seal a batch of ``count`` items (``priority``: for the items that
    name none); the batch as stored then. The
    image inputs its items share are deleted once its items have been given time to finish and
    retention has passed (or at once if it is refused). A cancel while it is validated ends it with
    no item stored; any other failure ends it too (never a batch validating for ever)."""
    batch = services.batches.create(tenant, base_url, webhook, source, count, batch_id=batch_id)
    # Its items' stored inputs: until they have had BATCH_TTL_S to finish, and retention after that.
    due = time.time() + BATCH_TTL_S + services.settings.retention_s
    retention.schedule(services.redis, "batch", batch.id, due)
    try:
        validated = validate_items(
            services, tenant, batch.id, items, base_url, lambda: services.batches.cancel_requested(batch.id), priority
        )
        if (kept_s := longest_retention(validated)) is not None:
            services.batches.keep_inputs_for(batch.id, kept_s)
        store_batch(services, batch, validated, tenant_cap)
    except CanceledWhileValidating:
        services.batches.cut_short(batch.id)
        services.batches.seal(batch.id)
    except ProblemError:
        _forget(services, batch)
        raise
    except BaseException:
        _abandon(services, batch)
        raise
    return services.batches.get(batch.id) or batch


def longest_retention(validated: Validated) -> int | None:
    """How long the inputs the items share are kept after the batch ends: as long as the item that keeps
    its data longest, when every valid item gave its own ``retention_s``; else None (KILN_RETENTION_S)."""
    found = [template.fields.get("retention_s") for template in validated.templates]
    if not found or None in found:
        return None
    return max(int(orjson.loads(value)) for value in found if value is not None)


def _forget(services: Services, batch: Batch) -> None:
    """A batch refused whole: its record and its stored inputs go."""
    services.batches.discard(batch)
    services.storage.delete_prefix(batch_prefix(batch.id))


def _abandon(services: Services, batch: Batch) -> None:
    """After an unexpected failure the batch ends at once: forgotten when none of its items was
    stored, else canceled with the items stored so far."""
    if services.batches.item_count(batch.id) == 0:
        _forget(services, batch)
        return
    cancel_batch(services, batch)
    services.batches.cut_short(batch.id)
    services.batches.seal(batch.id)
