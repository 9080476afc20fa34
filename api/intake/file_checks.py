"""Checking a prediction's safetensors file inputs (``lora_weights``, embeddings) at submission: what can
be known before a worker runs.

- An uploaded file (Files API URL): it must be the caller's, no larger than its kind's cap
  (``KILN_LORA_MAX_BYTES``, ``KILN_EMBEDDINGS_MAX_BYTES``), and its header (read from storage, never the
  whole file) a safetensors header the model takes there (``ModelInput.check_file_header``).
- Any other URL: https (plain http only with ``KILN_IMAGE_FETCH_ALLOW_PRIVATE``, for local
  development), on a host the SSRF guard lets through. Its size and contents are known only when a
  worker fetches it, bounded by the same cap, and checked there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from api.errors import ProblemError
from api.services import Services
from shared.inputs.safetensors_files import (
    SafetensorsInputError,
    file_inputs,
    file_size_cap,
    read_safetensors_header,
)
from shared.model_spec import ModelSpec
from shared.security.ssrf import URLRefused, resolve_checked
from shared.storage.files import file_id_from_url

# Headers of uploaded files already read in one request, by ``<kind>:<file id>``.
Headers = dict[str, Mapping[str, Any]]


def check_file_inputs(
    spec: ModelSpec,
    inputs: dict[str, Any],
    services: Services,
    tenant: str,
    base_url: str,
    headers: Headers | None = None,
) -> None:
    """422 naming the field for a safetensors file input that cannot work. ``headers`` (one request's,
    shared by a batch's items) keeps the headers of the uploads already read and found the caller's and
    within their cap, so a file repeated across a batch is read once; the model judges the header for
    every item, since what it takes may depend on the item's other inputs."""
    for field, kind, url in file_inputs(spec.input_model, inputs):
        file_id = file_id_from_url(url, base_url)
        try:
            if file_id is None:
                _check_remote(url, services)
                continue
            memo = headers if headers is not None else {}
            key = f"{kind}:{file_id}"
            if key not in memo:
                memo[key] = _uploaded_header(file_id, kind, services, tenant)
            spec.input_model.check_file_header(field, kind, memo[key], inputs, services.settings)
        except ValueError as exc:  # SafetensorsInputError, or a model's own check's ValueError
            raise ProblemError(422, f"input.{field}: {exc}") from None


def _check_remote(url: str, services: Services) -> None:
    allow_private = services.settings.image_fetch_allow_private
    if urlsplit(url).scheme != "https" and not allow_private:
        raise SafetensorsInputError("must be an https URL (or an uploaded file's URL)")
    try:
        resolve_checked(url, allow_private=allow_private)
    except URLRefused as exc:
        raise SafetensorsInputError(str(exc)) from None


def _uploaded_header(file_id: str, kind: str, services: Services, tenant: str) -> Mapping[str, Any]:
    """The header of the caller's uploaded file ``file_id``, once it is known to be within ``kind``'s cap."""
    record = services.files.get(file_id, tenant)
    if record is None:
        raise SafetensorsInputError(f"file {file_id} does not exist or has expired")
    limit, setting = file_size_cap(kind, services.settings)
    if record.size > limit:
        raise SafetensorsInputError(f"file {file_id} is {record.size} bytes, more than the {limit} allowed ({setting})")
    stored = services.files.open(record)
    if stored is None:  # deleted since its record was read
        raise SafetensorsInputError(f"file {file_id} does not exist or has expired")
    return read_safetensors_header(stored.body)
