"""Who may fetch a prediction's stored files (outputs, stored inputs, the inputs its batch's items
share): its owner's token, or anyone holding an unexpired signed URL of that very path
(``shared.security.signed_urls``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime

from fastapi.responses import StreamingResponse

from api.errors import ProblemError
from api.lanes import Lanes
from api.services import Services
from shared.predictions.record import Prediction, format_timestamp
from shared.security.signed_urls import Verdict
from shared.storage.objects import ObjectNotFound, StoredObject
from shared.storage.s3 import Storage


def signed_or_owned(
    services: Services, prediction_id: str, path: str, tenant: str | None, sig: str | None, expires: str | None
) -> Prediction:
    """The prediction, when the caller may fetch ``path`` of it; else 404 (or 403 for a signed URL
    of ours that expired)."""
    prediction = services.store.get(prediction_id)
    owner = prediction.tenant if prediction is not None else None
    grant(services, owner, path, tenant, sig, expires, f"prediction {prediction_id!r} not found")
    assert prediction is not None  # granted: it exists
    if prediction.data_removed:
        raise ProblemError(410, f"the files of prediction {prediction_id!r} have expired and were removed")
    return prediction


def grant(
    services: Services,
    owner: str | None,
    path: str,
    tenant: str | None,
    sig: str | None,
    expires: str | None,
    not_found: str,
) -> None:
    """Let the caller fetch ``path`` of an object ``owner`` holds (None: no such object): its owner's
    token, or an unexpired signed URL of that very path; else 404 saying ``not_found`` (403 for a
    signed URL of ours that expired)."""
    verdict = services.url_signer.check(path, expires=expires, sig=sig)
    is_owner = owner is not None and tenant is not None and owner == tenant
    if owner is None or not (is_owner or verdict in {Verdict.VALID, Verdict.EXPIRED}):
        raise ProblemError(404, not_found)
    if not is_owner and verdict is Verdict.EXPIRED:
        expired_at = format_timestamp(datetime.fromtimestamp(int(expires or 0), UTC))
        raise ProblemError(
            403,
            f"this signed URL expired at {expired_at} (KILN_OUTPUT_URL_TTL_S); GET the prediction "
            "for a fresh one, or send the owner's token",
        )


async def stream_stored(
    services: Services,
    owner: str,
    key: str,
    missing: str,
    media_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """The object at ``key``, streamed from S3; 404 saying ``missing`` when it is gone.

    Every S3 call (the open, then each chunk) runs on the storage lanes within ``owner``'s share of them,
    never on the thread pool synchronous reads run on: a stalled S3 held a download's thread for as long as
    the S3 client waited, and 40 downloads held every thread, so another token's ``GET /v1/predictions/{id}``
    waited a minute."""
    lanes = services.storage_lanes
    try:
        stored, first = await lanes.run(owner, _open_with_first_chunk, services.storage, key)
    except ObjectNotFound:
        raise ProblemError(404, missing) from None
    return StreamingResponse(
        _chunks(lanes, owner, first, stored.body),
        media_type=media_type or stored.content_type,
        headers={"Content-Length": str(stored.content_length), **(headers or {})},
    )


def _open_with_first_chunk(storage: Storage, key: str) -> tuple[StoredObject, bytes]:
    """The object and its first chunk, read in one trip to a thread (an image is often one chunk)."""
    stored = storage.open(key)
    return stored, next(stored.body, b"")


async def _chunks(lanes: Lanes, owner: str, first: bytes, body: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``first``, then the rest of ``body``'s chunks, each read on a storage lane."""
    chunk = first
    while chunk:
        yield chunk
        chunk = await lanes.run(owner, next, body, b"")
