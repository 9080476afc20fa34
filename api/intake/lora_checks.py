"""Checking a prediction's LoRA inputs (``lora_weights``) at submission: what can be known before a worker runs.

- An uploaded file (Files API URL): it must be the caller's, no larger than ``KILN_LORA_MAX_BYTES``,
  and its header (read from storage, never the whole file) a safetensors header of LoRA tensors.
- Any other URL: https (plain http only with ``KILN_IMAGE_FETCH_ALLOW_PRIVATE``, for local
  development), on a host the SSRF guard lets through. Its size and contents are known only when a
  worker fetches it, bounded by the same cap; whether its layers fit the model's base is checked there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from api.errors import ProblemError
from api.services import Services
from shared.inputs.lora import LoraInputError, check_lora_header, lora_inputs, read_safetensors_header
from shared.model_spec import ModelSpec
from shared.security.ssrf import URLRefused, resolve_checked
from shared.storage.files import file_id_from_url


def check_lora_inputs(
    spec: ModelSpec,
    inputs: dict[str, Any],
    services: Services,
    tenant: str,
    base_url: str,
    checked: set[str] | None = None,
) -> None:
    """422 for a LoRA input that cannot work. ``checked`` (one request's, shared by a batch's items)
    remembers the uploaded files already found good, so a LoRA repeated across a batch is read once."""
    for where, url in lora_inputs(spec.input_model, inputs):
        file_id = file_id_from_url(url, base_url)
        try:
            if file_id is None:
                _check_remote(url, services)
            elif checked is None or f"lora:{file_id}" not in checked:
                _check_uploaded(file_id, services, tenant)
                if checked is not None:
                    checked.add(f"lora:{file_id}")
        except LoraInputError as exc:
            raise ProblemError(422, f"input.{where}: {exc}") from None


def _check_remote(url: str, services: Services) -> None:
    allow_private = services.settings.image_fetch_allow_private
    if urlsplit(url).scheme != "https" and not allow_private:
        raise LoraInputError("must be an https URL (or an uploaded file's URL)")
    try:
        resolve_checked(url, allow_private=allow_private)
    except URLRefused as exc:
        raise LoraInputError(str(exc)) from None


def _check_uploaded(file_id: str, services: Services, tenant: str) -> None:
    record = services.files.get(file_id, tenant)
    if record is None:
        raise LoraInputError(f"file {file_id} does not exist or has expired")
    limit = services.settings.lora_max_bytes
    if record.size > limit:
        raise LoraInputError(
            f"file {file_id} is {record.size} bytes, more than the {limit} allowed (KILN_LORA_MAX_BYTES)"
        )
    check_lora_header(read_safetensors_header(services.files.open(record).body))
