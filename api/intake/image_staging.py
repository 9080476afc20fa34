"""Every image input checked at submission and, unless it is small, kept in S3 with its prediction.

Whatever its source (a data URI, an http(s) URL, an uploaded file's ``urls.get``), each image is
read and decoded fully once per request, within the pixel cap, so a truncated, corrupt or
unusable image is a 422 naming its field now, never a failure in the worker. Then:

- a URL is fetched once and stored (the worker never refetches it);
- an uploaded file is copied inside S3 to the prediction, so deleting the file later changes nothing;
- a data URI over ``KILN_INLINE_INPUT_MAX_BYTES`` is stored, and the record holds the URL of the
  stored copy instead (``…/v1/predictions/<id>/inputs/<field>``), so a queued prediction costs Redis
  a few KiB whatever its images weigh. Clients see that URL signed (``shared.predictions.client_json``).

The record's ``input_files`` maps each stored URL to its storage key; a stored data URI's reference
names its object itself (no entry: a few hundred bytes less per record). The worker reads both from S3.
Within one request (a batch's items), an image repeated across predictions is decoded once and
uploaded once: later predictions get a server-side copy of the first one's object, so each
prediction still owns (and at retention deletes) its own objects.

A batch object's items (``RequestImages.batch_id``, ``api.intake.batch_file``) instead share one stored
copy per image owned by the batch (``shared.storage.objects.batch_input_key``), named in each record's
``input_files``: a 100,000-line file repeating one image stores it once, and no item's retention
deletes what another item still needs. The batch's objects are deleted by the janitor
(``shared.predictions.retention``, ``batch:<id>``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api.errors import ProblemError
from api.intake.fetch_ahead import FetchAhead
from api.services import Services
from shared.inputs.images import (
    CheckedImage,
    ImageInputError,
    check_image,
    check_uri_scheme,
    decode_data_uri,
    fetch_url,
)
from shared.inputs.schema import image_inputs
from shared.model_spec import ModelSpec
from shared.predictions.client_json import batch_input_path, input_path
from shared.settings import Settings
from shared.storage.files import file_id_from_url
from shared.storage.objects import ObjectNotFound, batch_input_key, file_key, input_key, prediction_prefix

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")  # never "." or "..", which no S3 key may end in


@dataclass
class SeenImage:
    checked: CheckedImage
    # Where the first prediction of the request that stored it keeps it (None while inline only).
    stored_key: str | None = None
    # Its object's name among a batch object's inputs (``_store_for_batch``), once known.
    batch_name: str | None = None


@dataclass
class RequestImages:
    """The images of one create request, shared by a batch's items: data URIs whose header was
    checked (``checked``, for schema validation) and every image decoded so far, with where it was
    first stored (``seen``)."""

    checked: set[str] = field(default_factory=set)
    seen: dict[str, SeenImage] = field(default_factory=dict)
    # The batch object whose items these are: their stored images belong to it, not to one item.
    batch_id: str | None = None
    # The headers of the uploaded safetensors files read so far (``api.intake.file_checks``).
    file_headers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    # A batch's image URLs, fetched a few at once ahead of the lines that name them (``api.intake.fetch_ahead``).
    ahead: FetchAhead | None = None

    def forget(self, prediction_id: str) -> None:
        """A prediction was refused: the objects it stored are deleted, so nothing copies from them."""
        prefix = prediction_prefix(prediction_id)
        for seen in self.seen.values():
            if seen.stored_key is not None and seen.stored_key.startswith(prefix):
                seen.stored_key = None


def stored_name(where: str) -> str:
    """The object name of the image input at ``where`` (``input_image``, ``references.1``); a field
    name that would not be safe in a URL path is replaced by a stable one."""
    return where if _SAFE_NAME.match(where) else f"input-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def is_stored_name(name: str) -> bool:
    """Whether ``name`` could name a stored image input (``stored_name``'s, or a batch's shared copy's hex
    digest): any other is answered 404 before S3 is asked, which refuses some (``.``, NUL) as bad requests."""
    return _SAFE_NAME.match(name) is not None


def stage_images(
    spec: ModelSpec,
    inputs: dict[str, Any],
    services: Services,
    tenant: str,
    prediction_id: str,
    base_url: str,
    images: RequestImages,
    found: list[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check every image input of ``inputs`` (``found``: as ``image_inputs`` found them, when already
    known); store those that must be (see the module). Returns the input as it is to be stored (large
    data URIs replaced by their stored copy's URL) and its ``input_files`` (URL or file URL -> storage key)."""
    settings = services.settings
    input_files: dict[str, str] = {}
    replaced: dict[str, str] = {}
    for where, uri in found if found is not None else image_inputs(spec.input_model, inputs):
        seen = images.seen.get(uri)
        try:
            data = None if seen is not None else _read(uri, services, tenant, base_url, images.ahead)
            if seen is None:
                assert data is not None
                seen = images.seen[uri] = SeenImage(check_image(data, settings.image_max_pixels))
            spec.input_model.check_image(where, seen.checked)
        except ImageInputError as exc:
            raise ProblemError(422, f"input.{where}: {exc}") from None
        is_data = check_uri_scheme(uri) == "data"
        if uri in input_files or uri in replaced or (is_data and len(uri) <= settings.inline_input_max_bytes):
            continue
        if images.batch_id is not None:
            _store_for_batch(services, uri, where, seen, data, tenant, base_url, images.batch_id, input_files, replaced)
            continue
        name = stored_name(where)
        key = input_key(prediction_id, name)
        try:
            _store(services, uri, seen, key, data, tenant, base_url)
        except ObjectNotFound:
            raise ProblemError(422, f"input.{where}: the file does not exist or has expired") from None
        if is_data:
            # The reference names its object (``shared.predictions.client_json.stored_input_name``).
            replaced[uri] = f"{base_url}{input_path(prediction_id, name)}"
        else:
            input_files[uri] = key
    return _replace_strings(inputs, replaced), input_files


def _store_for_batch(
    services: Services,
    uri: str,
    where: str,
    seen: SeenImage,
    data: bytes | None,
    tenant: str,
    base_url: str,
    batch_id: str,
    input_files: dict[str, str],
    replaced: dict[str, str],
) -> None:
    """Store the image once for the whole batch (see the module); the record names the copy in its
    ``input_files``, a large data URI being replaced by a URL that names the batch."""
    name = seen.batch_name
    if name is None:  # every line naming the image comes here: its name is found once
        name = seen.batch_name = hashlib.sha256(uri.encode()).hexdigest()[:32]
    key = batch_input_key(batch_id, name)
    if seen.stored_key != key:
        try:
            _store(services, uri, seen, key, data, tenant, base_url)
        except ObjectNotFound:
            raise ProblemError(422, f"input.{where}: the file does not exist or has expired") from None
        seen.stored_key = key
    if check_uri_scheme(uri) == "data":
        reference = replaced[uri] = f"{base_url}{batch_input_path(batch_id, name)}"
        input_files[reference] = key
    else:
        input_files[uri] = key


def _read(uri: str, services: Services, tenant: str, base_url: str, ahead: FetchAhead | None = None) -> bytes:
    """The bytes of an image input, bounded like every fetch (``KILN_IMAGE_FETCH_MAX_BYTES``); a URL's
    as its fetch ``ahead`` found them, when it is one of those."""
    settings = services.settings
    if check_uri_scheme(uri) == "data":
        return decode_data_uri(uri, settings.image_fetch_max_bytes)
    file_id = file_id_from_url(uri, base_url)
    if file_id is None:
        fetched = ahead.take(uri) if ahead is not None else None
        return fetched.result() if fetched is not None else fetch_image(uri, settings)
    record = services.files.get(file_id, tenant)
    if record is None:
        raise ImageInputError(f"file {file_id} does not exist or has expired")
    if record.size > settings.image_fetch_max_bytes:
        raise ImageInputError(
            f"file {file_id} is {record.size} bytes, more than {settings.image_fetch_max_bytes} "
            "(KILN_IMAGE_FETCH_MAX_BYTES)"
        )
    stored = services.files.open(record)
    if stored is None:
        raise ImageInputError(f"file {file_id} does not exist or has expired")
    return b"".join(stored.body)


def fetch_image(url: str, settings: Settings) -> bytes:
    """An image URL's bytes, through the SSRF guard and within the fetch limits of ``settings``."""
    return fetch_url(
        url,
        timeout_s=settings.image_fetch_timeout_s,
        max_bytes=settings.image_fetch_max_bytes,
        allow_private=settings.image_fetch_allow_private,
        max_redirects=settings.image_fetch_max_redirects,
    )


def _store(
    services: Services, uri: str, seen: SeenImage, key: str, data: bytes | None, tenant: str, base_url: str
) -> None:
    """Put the image at ``key``: a server-side copy when S3 already holds it (an uploaded file, or
    the copy of an earlier prediction of the request), an upload otherwise."""
    file_id = file_id_from_url(uri, base_url)
    source = seen.stored_key or (file_key(file_id) if file_id is not None else None)
    if source is not None:
        services.storage.copy(source, key)
    else:
        payload = data if data is not None else _read(uri, services, tenant, base_url)
        services.storage.put_bytes(key, payload, f"image/{seen.checked.format.lower()}")
    if seen.stored_key is None:
        seen.stored_key = key


def _replace_strings(value: Any, replaced: dict[str, str]) -> Any:
    """``value`` (JSON) with every string that is a key of ``replaced`` swapped for its value."""
    if not replaced:
        return value
    if isinstance(value, str):
        return replaced.get(value, value)
    if isinstance(value, list):
        return [_replace_strings(item, replaced) for item in value]
    if isinstance(value, dict):
        return {key: _replace_strings(item, replaced) for key, item in value.items()}
    return value
