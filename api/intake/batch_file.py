"""Taking in a batch's items (``POST /v1/batches``): inline create bodies or the lines of a JSONL file.

Each item is validated on its own with the same code as a single create (``api.intake.inline_batch.prepare_item``);
a bad item (or a line that is not JSON) becomes a refused entry with its line number and problem,
and never sinks the rest. Items with the same text are validated once: the first one's prepared
prediction is the template of the others, which differ only in their id. The batch is admitted
against the queue caps whole, then stored a chunk at a time, each in one atomic script
(``PredictionStore.create_batch_chunk``: refused whole, and drawn again, if one of its new ids is
stored): the chunk's compact records with their queue-line tickets, the tenant's index, the batch's
item list and counts, and the items' places in the dispatcher's lists (``shared.scheduling.dispatcher``:
its normal lane, or the low lane for low items); no Celery message is written here. A chunk is stored
while the next one is prepared.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import cache, partial
from typing import Any, cast

import orjson
from pydantic import ValidationError

from api.errors import ProblemError, problem_body
from api.intake.batch_pool import ShareNotHandedOver, handed_over, helped, helper, replace_helper, taken
from api.intake.fetch_ahead import FetchAhead
from api.intake.image_staging import RequestImages, fetch_image
from api.intake.inline_batch import item_spec, prepare_item, prepare_item_input
from api.intake.submission import _queue_full_problem
from api.services import Services
from api.views.batches import cancel_batch, cancel_items
from shared.batches.records import BATCH_TTL_S, Batch, RefusedItem, invalid_entry
from shared.db import keys
from shared.db.client import AlreadyStored
from shared.inputs.json_nesting import nests_deeper_than, too_deep_problem
from shared.inputs.schema import InputLimits, image_inputs, standalone_checks
from shared.model_spec import ModelSpec
from shared.predictions import retention
from shared.predictions.record import Prediction, new_ids
from shared.predictions.store import ChunkQueue, ItemRecords
from shared.runtime import metrics
from shared.scheduling.queue_counters import QueueFull
from shared.scheduling.queues import Priority
from shared.storage.files import FileRecord, FileStore, file_id_from_url
from shared.storage.objects import StoredObject, batch_prefix
from shared.storage.s3 import Storage

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
    """What items with the same fields but their input share (their model, webhook, priority, ...):
    the fields of the first one's record but its id and input. Its ``created_at`` is theirs too."""

    family: str
    model: str
    fields: dict[str, bytes]
    low: bool = False


@dataclass
class Validated:
    """The batch's items, in order: a template index per valid item, a refused item otherwise; and each
    valid item's own fields (``OwnFields``; the same object for items with the same text)."""

    entries: list[int | RefusedItem] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)
    own: list[OwnFields] = field(default_factory=list)

    def families(self) -> list[str]:
        return [self.templates[e].family for e in self.entries if isinstance(e, int)]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (a helper process's share, back to its intake process) as plain lists of the own fields'
        bytes: 50,000 ``OwnFields`` pickled one by one took 0.28 s both ways, the lists 0.03 s."""
        own = self.own
        return _rebuilt, (self.entries, self.templates, [o.input for o in own], [o.input_files for o in own])


@dataclass(frozen=True)
class OwnFields:
    """An item's encoded ``input`` and ``input_files`` (None: none), as its record holds them."""

    input: bytes
    input_files: bytes | None = None


# What a refused item's place in ``Validated.own`` holds.
_NO_FIELDS = OwnFields(b"")


def _rebuilt(
    entries: list[int | RefusedItem], templates: list[Template], inputs: list[bytes], input_files: list[bytes | None]
) -> Validated:
    """A ``Validated`` from its pickled lists (``Validated.__reduce__``)."""
    return Validated(entries, templates, [OwnFields(*fields) for fields in zip(inputs, input_files, strict=True)])


@dataclass(frozen=True)
class _KnownRest:
    """The fields but the input of an item found good (encoded, sorted): its model and its template."""

    spec: ModelSpec
    template: int


def inline_items(items: list[Any]) -> Iterator[RawItem]:
    """Each inline item as the line of a file holding it: the stdlib writes what orjson cannot (an integer
    beyond 64 bits) or would change (NaN and ±Infinity, which orjson writes as null), so that the item is
    refused for it as the same line of a file is."""
    for index, item in enumerate(items, start=1):
        try:
            line: bytes | None = orjson.dumps(item)
        except TypeError:
            line = None
        yield index, json.dumps(item).encode() if line is None or b"null" in line else line


def file_lines(data: bytes) -> Iterator[RawItem]:
    """The non-blank lines of a JSONL file, numbered as an editor numbers them."""
    for index, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield index, line


def validate_all(
    services: Services,
    tenant: str,
    batch_id: str,
    items: Iterable[RawItem],
    base_url: str,
    canceled: Callable[[], bool] = lambda: False,
    priority: Priority = "normal",
) -> Validated:
    """``validate_items``, for a batch of ``SHARE_FROM`` items or more shared with this intake process's
    helper (``api.intake.batch_pool.helper``: validating is CPU-bound, and the machine has a core more),
    which validates its share at the same time; the two are merged in line order, each item as either
    process would have found it. Lines naming the same image URL are given to the same process, so
    each image is still fetched once (``_shares``)."""
    pool = helper()
    items = items if pool is None or isinstance(items, Sequence) else list(items)
    if pool is None or not isinstance(items, Sequence) or len(items) < SHARE_FROM:
        return validate_items(services, tenant, batch_id, items, base_url, canceled, priority)
    mine, theirs = _shares(services, items, base_url)
    share = [items[i] for i in theirs]
    try:
        with handed_over(share) as path:
            try:
                helping = pool.submit(helped, _validate_share, tenant, batch_id, path, base_url, priority)
            except BrokenProcessPool:  # the helper died (killed?): another is started, and this file checked here
                replace_helper()
                return validate_items(services, tenant, batch_id, items, base_url, canceled, priority)
            try:
                found = validate_items(
                    services, tenant, batch_id, (items[i] for i in mine), base_url, canceled, priority
                )
            except BaseException:
                wait([helping])  # it stops too, if canceled: it asks the batch itself
                raise
            try:
                theirs_found = helping.result()
            except BrokenProcessPool:
                replace_helper()
                theirs_found = validate_items(services, tenant, batch_id, share, base_url, canceled, priority)
    except ShareNotHandedOver as exc:
        log.warning("batch %s: its share could not be handed to the helper (%s); all checked here", batch_id, exc)
        return validate_items(services, tenant, batch_id, items, base_url, canceled, priority)
    return _merged(len(items), [(mine, found), (theirs, theirs_found)])


def _validate_share(
    services: Services, tenant: str, batch_id: str, share: str, base_url: str, priority: Priority
) -> Validated:
    """``validate_items`` in the helper process, of the items handed over at ``share``, stopping when the
    batch is canceled."""
    items: list[RawItem] = taken(share)
    return validate_items(
        services, tenant, batch_id, items, base_url, lambda: services.batches.cancel_requested(batch_id), priority
    )


# Items from which a batch's validation is shared with the helper process (below: not worth the copies).
SHARE_FROM = 2000
# What an image URL that is not this API's starts with.
_IMAGE_URL = ("http://", "https://")


def _shares(services: Services, items: Sequence[RawItem], base_url: str) -> tuple[list[int], list[int]]:
    """The positions of the items this process validates, and of those the helper does: every other one,
    except that items naming the same image URL (their first, in sorted order) go to the same process."""
    shares: tuple[list[int], list[int]] = ([], [])
    specs: dict[bytes, ModelSpec | None] = {}
    for position, (_, text) in enumerate(items):
        urls = _image_urls(services, text, base_url, specs)
        side = zlib.crc32(min(urls).encode()) & 1 if urls else position & 1
        shares[side].append(position)
    return shares


def _merged(count: int, parts: list[tuple[list[int], Validated]]) -> Validated:
    """The validations of parts of a batch (each with the positions of its items) as one, in item order."""
    entries: list[int | RefusedItem] = [_UNSET] * count
    own = [_NO_FIELDS] * count
    templates: list[Template] = []
    for positions, part in parts:
        offset = len(templates)
        templates += part.templates
        for position, entry, fields in zip(positions, part.entries, part.own, strict=True):
            entries[position] = entry if isinstance(entry, RefusedItem) else entry + offset
            own[position] = fields
    return Validated(entries, templates, own)


_UNSET = RefusedItem(0, {})


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
    (asked every ``CANCEL_CHECK_EVERY`` items) says so.

    Items whose fields but the input are those of an item found good before (the usual batch file: one
    model, its own prompt and seed per line) have only their input checked (``prepare_item_input``);
    the uploaded files they name are looked up once per batch (``RequestFiles``). Of those, an input
    that differs from one found good only in its model's standalone fields (``ModelInput.standalone_fields``:
    the prompts and the seed) has only these checked (``_standalone_own``)."""
    found = Validated()
    cache: dict[bytes, tuple[int, OwnFields] | RefusedItem] = {}
    rests: dict[bytes, _KnownRest] = {}
    skeletons: dict[bytes, _Skeleton] = {}
    items = items if isinstance(items, Sequence) else list(items)
    images = RequestImages(batch_id=batch_id, ahead=_fetch_ahead(services, items, base_url))
    uploads = UploadsMeanwhile(services.storage)
    services = replace(services, files=RequestFiles(services.files), storage=cast(Storage, uploads))
    with uploads:
        for count, (line, text) in enumerate(items, start=1):
            if count % CANCEL_CHECK_EVERY == 0 and canceled():
                raise CanceledWhileValidating
            if images.ahead is not None:
                images.ahead.reached(count)
            known = cache.get(text)
            if known is None:
                known = _validate_one(
                    services, tenant, batch_id, line, text, base_url, images, found, priority, rests, skeletons
                )
                # Problems other than 422 (a file gone, a fetch that timed out) may not repeat.
                if not isinstance(known, RefusedItem) or known.problem.get("status") == 422:
                    cache[text] = known
            if isinstance(known, RefusedItem):
                found.entries.append(RefusedItem(line, known.problem))
                found.own.append(_NO_FIELDS)
            else:
                found.entries.append(known[0])
                found.own.append(known[1])
    return found


def _fetch_ahead(services: Services, items: Sequence[RawItem], base_url: str) -> FetchAhead | None:
    """The image URLs (not this API's) that items name in their model's image inputs, to be fetched ahead
    of the first item naming each (``api.intake.fetch_ahead``); None when they name none."""
    specs: dict[bytes, ModelSpec | None] = {}
    first: dict[str, int] = {}
    for position, (_, text) in enumerate(items, start=1):
        for url in _image_urls(services, text, base_url, specs):
            first.setdefault(url, position)
    if not first:
        return None
    return FetchAhead(
        ((position, url) for url, position in first.items()), partial(fetch_image, settings=services.settings)
    )


def _image_urls(services: Services, text: bytes, base_url: str, specs: dict[bytes, ModelSpec | None]) -> list[str]:
    """The http(s) URLs not of this API an item's input names where its model takes an image (none for
    an item whose model is not found: it will be refused). ``specs``: each item kind's model, found once.
    Only an item with an http(s) URL not of this API is read (most name uploaded files only)."""
    if text.count(b"http") <= text.count(base_url.encode()) or nests_deeper_than(text):
        return []
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(raw, dict) or not isinstance(inputs := raw.get("input"), dict):
        return []
    rest = _rest_key(raw)
    if rest is None:
        return []
    if rest not in specs:
        try:
            specs[rest] = item_spec(services, raw)
        except (ProblemError, ValidationError):
            specs[rest] = None
    spec = specs[rest]
    if spec is None:
        return []
    found = image_inputs(spec.input_model, inputs)
    return [uri for _, uri in found if uri.startswith(_IMAGE_URL) and file_id_from_url(uri, base_url) is None]


class UploadsMeanwhile:
    """The storage a batch's validation uses: each upload (an image fetched from a URL, a large data
    URI) is made on a thread of ``UPLOAD_THREADS`` while the next lines are checked, not in turn (300
    distinct image URLs: seconds of round trips to S3). Every other call is the storage's own; a copy
    or read of an object still being uploaded waits for it. Leaving the ``with`` waits for every
    upload, and raises the first that failed: no item is stored before its images are."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._pending: dict[str, Future[None]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._pending[key] = _uploads().submit(self._storage.put_bytes, key, data, content_type)

    def copy(self, source: str, key: str) -> None:
        self._settle(source)
        self._storage.copy(source, key)

    def open(self, key: str) -> StoredObject:
        self._settle(key)
        return self._storage.open(key)

    def _settle(self, key: str) -> None:
        if (pending := self._pending.get(key)) is not None:
            pending.result()

    def __enter__(self) -> UploadsMeanwhile:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every upload finished (their first failure raised, unless the batch already failed)."""
        pending, self._pending = self._pending, {}
        wait(pending.values())
        if exc[0] is None:
            for upload in pending.values():
                upload.result()


# Uploads of one intake process made at once (S3 round trips: threads wait, they do not compute).
UPLOAD_THREADS = 8


@cache
def _uploads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="batch-uploads")


class RequestFiles(FileStore):
    """The tenant's uploaded files as one batch request found them: each looked up once, however many
    of its items name it (a 100,000-line file naming one reference image: one read, not 200,000)."""

    def __init__(self, files: FileStore) -> None:
        super().__init__(files.redis, files.storage, files.retention_s)
        self._found: dict[tuple[str, str], FileRecord | None] = {}

    def get(self, file_id: str, tenant: str) -> FileRecord | None:
        if (file_id, tenant) not in self._found:
            self._found[(file_id, tenant)] = super().get(file_id, tenant)
        return self._found[(file_id, tenant)]


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
    rests: dict[bytes, _KnownRest],
    skeletons: dict[bytes, _Skeleton],
) -> tuple[int, OwnFields] | RefusedItem:
    if nests_deeper_than(text):
        return RefusedItem(line, problem_body(422, too_deep_problem(f"line {line}")))
    try:
        raw, valid_text = _parse(text)
    except ValueError as exc:
        return RefusedItem(line, problem_body(422, f"not JSON ({exc})"))
    if not isinstance(raw, dict):
        return RefusedItem(line, problem_body(422, "a create body must be a JSON object"))
    rest = _rest_key(raw)
    known = rests.get(rest) if rest is not None and isinstance(raw.get("input"), dict) else None
    try:
        if known is not None:
            skeleton = _skeleton_key(known, raw["input"]) if valid_text else None
            like = skeletons.get(skeleton) if skeleton is not None else None
            if like is not None and (own := _standalone_own(services, known.spec, raw["input"], like)) is not None:
                return known.template, own
            inputs, input_files = prepare_item_input(
                services, tenant, known.spec, raw, base_url, images, text_checked=valid_text
            )
            own = _own_fields(inputs, input_files)
            if skeleton is not None:
                skeletons[skeleton] = _Skeleton(inputs, own.input_files)
            return known.template, own
        prediction = prepare_item(services, tenant, raw, base_url, images, priority)
    except ProblemError as exc:
        return RefusedItem(line, problem_body(exc.status, exc.detail, **exc.extra))
    prediction.batch_id = batch_id
    low = prediction.priority == "low"
    fields = _shared_fields(prediction)
    own = OwnFields(fields.pop("input"), fields.pop("input_files", None))
    found.templates.append(Template(prediction.queue, prediction.model, fields, low))
    if rest is not None:
        rests[rest] = _KnownRest(item_spec(services, raw), len(found.templates) - 1)
    return len(found.templates) - 1, own


@dataclass(frozen=True)
class _Skeleton:
    """An input found good, as stored, with its encoded ``input_files``: what an input that differs from it
    only in its model's standalone fields is stored as, with its own values of those."""

    stored: dict[str, Any]
    input_files: bytes | None


def _skeleton_key(known: _KnownRest, inputs: dict[str, Any]) -> bytes | None:
    """What inputs that differ only in the model's standalone fields share (their template, and each
    field with those fields' values blanked); None if orjson cannot write it."""
    standalone = known.spec.input_model.standalone_fields
    if not standalone:
        return None
    try:
        return orjson.dumps([known.template, {name: None if name in standalone else v for name, v in inputs.items()}])
    except TypeError:
        return None


def _standalone_own(services: Services, spec: ModelSpec, inputs: dict[str, Any], like: _Skeleton) -> OwnFields | None:
    """The own fields of an input that differs from ``like`` only in standalone fields, each of those
    checked as the model checks it (``standalone_checks``); None if one is refused (the input is then
    checked whole, for the problem a whole check gives) or cannot be checked alone."""
    checks = standalone_checks(spec.input_model)
    context = {"limits": InputLimits.from_settings(services.settings)}
    stored = dict(like.stored)
    for name in spec.input_model.standalone_fields:
        if name not in inputs:
            continue
        check = checks.get(name)
        if check is None or name not in stored:
            return None
        try:
            stored[name] = check.dump_python(check.validate_python(inputs[name], context=context), mode="json")
        except ValidationError:
            return None
    return OwnFields(orjson.dumps(stored), like.input_files)


def _rest_key(raw: dict[str, Any]) -> bytes | None:
    """An item's fields but its input, encoded with sorted keys; None if orjson cannot write them."""
    try:
        return orjson.dumps({name: value for name, value in raw.items() if name != "input"}, option=_SORTED)
    except TypeError:
        return None


_SORTED = orjson.OPT_SORT_KEYS


def _own_fields(inputs: dict[str, Any], input_files: dict[str, str]) -> OwnFields:
    """Encoded as ``Prediction.to_compact_hash`` encodes them (no ``input_files`` when there are none)."""
    return OwnFields(orjson.dumps(inputs), orjson.dumps(input_files) if input_files else None)


def _parse(text: bytes) -> tuple[Any, bool]:
    """The line's JSON, and whether its every string is valid Unicode: orjson refuses a lone surrogate
    escape (``"\\ud800"``), which the stdlib parser, its fallback, lets through."""
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError:
        return json.loads(text), False  # what orjson refuses but JSON allows (integers beyond 64 bits)


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
        groups = _share_fields(services, batch, validated)
        chunks = [
            range(start, min(start + CHUNK, len(validated.entries)))
            for start in range(0, len(validated.entries), CHUNK)
        ]
        following = _prepared(services, batch, validated, groups, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            if cut_short := services.batches.cancel_requested(batch.id):
                break
            assert following is not None  # prepared for every chunk
            writing = _writes().submit(_store_chunk, services, batch, validated, groups, chunk, following)
            # The next chunk is prepared while Redis stores this one.
            try:
                following = (
                    _prepared(services, batch, validated, groups, chunks[index + 1])
                    if index + 1 < len(chunks)
                    else None
                )
            except BaseException:
                stored += writing.result()[0]  # counted as stored before failing
                raise
            ids, runs = writing.result()
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


@dataclass
class _Group:
    """Valid items stored alike: the same template and ``input_files``. ``fields``: what each of their
    records holds but its id (and its input, when ``own_input``)."""

    template: int
    fields: dict[str, bytes]
    own_input: bool


@dataclass
class _Groups:
    """The batch's groups, and each entry's group (None: a refused entry)."""

    groups: list[_Group]
    of_entry: list[int | None]


def _share_fields(services: Services, batch: Batch, validated: Validated) -> _Groups:
    """Items of the same template and ``input_files`` (a batch file's usual lines: one model, one
    reference image, a prompt and seed of their own) share one stored copy of those fields
    (``keys.batch_shared_fields``: the version, the base URL, ``created_at``, ``input_files``, and the
    input too when theirs is the same); each record keeps only what the status scripts read
    (``OWN_FIELDS``) and its own input, small enough for Redis's compact hash encoding. An item alone
    in its group keeps every field."""
    index: dict[tuple[int, bytes | None], int] = {}
    of_entry: list[int | None] = []
    sizes: list[int] = []
    inputs: list[set[bytes]] = []
    for entry, own in zip(validated.entries, validated.own, strict=True):
        if isinstance(entry, RefusedItem):
            of_entry.append(None)
            continue
        group = index.setdefault((entry, own.input_files), len(index))
        if group == len(sizes):
            sizes.append(0)
            inputs.append(set())
        sizes[group] += 1
        if len(inputs[group]) < 2:
            inputs[group].add(own.input)
        of_entry.append(group)
    groups: list[_Group] = []
    with services.redis.pipeline(transaction=False) as pipe:
        for (template, input_files), group in index.items():
            fields = dict(validated.templates[template].fields)
            if input_files is not None:
                fields["input_files"] = input_files
            own_input = len(inputs[group]) > 1
            if not own_input:
                fields["input"] = next(iter(inputs[group]))
            if sizes[group] > 1:
                key = keys.batch_shared_fields(batch.id, group)
                pipe.hset(key, mapping={k: v for k, v in fields.items() if k not in OWN_FIELDS})
                pipe.expire(key, services.batches.ttl_s)
                fields = {k: v for k, v in fields.items() if k in OWN_FIELDS} | {"shared_fields": orjson.dumps(key)}
            groups.append(_Group(template, fields, own_input))
        if any(size > 1 for size in sizes):  # the shared copies' keys, for data removal to find them
            pipe.hset(keys.batch_record(batch.id), keys.BATCH_SHARED_GROUPS, len(index))
        pipe.execute()
    return _Groups(groups, of_entry)


@dataclass(frozen=True)
class _Chunk:
    """A chunk ready to store (``_prepared``): the ids of its predictions, how many per model, its records,
    and where they are queued."""

    stored: list[str]
    runs: Counter[str]
    records: list[ItemRecords]
    queue: ChunkQueue


# Stores a batch's chunk while its intake process prepares the next (Redis works, this process waits).
@cache
def _writes() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="batch-store")


def _store_chunk(
    services: Services, batch: Batch, validated: Validated, groups: _Groups, chunk: range, prepared: _Chunk
) -> tuple[list[str], Counter[str]]:
    """Its records and their queueing, one atomic step; returns the ids of the predictions it stored, and
    how many per model. Should an id drawn for it have a record already, nothing of the chunk is stored and
    it is tried with ids drawn afresh."""
    for _ in range(ID_DRAWS - 1):
        try:
            return _stored(services, prepared)
        except AlreadyStored as exc:
            log.error("batch %s: new prediction ids already stored (%s); drawing others", batch.id, exc)
            prepared = _prepared(services, batch, validated, groups, chunk)
    return _stored(services, prepared)


def _stored(services: Services, chunk: _Chunk) -> tuple[list[str], Counter[str]]:
    services.store.create_batch_chunk(chunk.records, chunk.queue)
    return chunk.stored, chunk.runs


def _prepared(services: Services, batch: Batch, validated: Validated, groups: _Groups, chunk: range) -> _Chunk:
    """The chunk's records and where they are queued, its items given new ids."""
    entries_in = validated.entries
    fresh = iter(new_ids(sum(1 for i in chunk if not isinstance(entries_in[i], RefusedItem))))
    entries: list[str] = []
    by_lane: dict[tuple[str, bool], list[str]] = {}
    by_group: dict[int, tuple[list[str], list[bytes]]] = {}
    for i in chunk:
        entry = entries_in[i]
        if isinstance(entry, RefusedItem):
            entries.append(invalid_entry(entry))
            continue
        template = validated.templates[entry]
        prediction_id = next(fresh)
        entries.append(prediction_id)
        by_lane.setdefault((template.family, template.low), []).append(prediction_id)
        group = groups.of_entry[i]
        assert group is not None  # a valid entry's
        ids, inputs = by_group.setdefault(group, ([], []))
        ids.append(prediction_id)
        inputs.append(validated.own[i].input)
    stored = [i for ids in by_lane.values() for i in ids]
    runs: Counter[str] = Counter()
    records: list[ItemRecords] = []
    for group, (ids, inputs) in by_group.items():
        kind = groups.groups[group]
        runs[validated.templates[kind.template].model] += len(ids)
        own = ("input",) if kind.own_input else ()
        records.append(ItemRecords(kind.fields, ids, own, [(value,) for value in inputs] if own else ()))
    lanes = [services.dispatcher.lane_of(family, ids, low=low) for (family, low), ids in by_lane.items()]
    queue = ChunkQueue(batch.tenant, batch.id, entries, len(entries) - len(stored), runs, lanes, services.batches.ttl_s)
    return _Chunk(stored, runs, records, queue)


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
        validated = validate_all(
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
