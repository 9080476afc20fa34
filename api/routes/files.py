"""The Files API: upload once, then use the file's ``urls.get`` as an input."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE, parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from api.deps import BaseURL, CurrentTenant, ServicesDep
from api.errors import ProblemError, reject_invalid_text
from api.pagination import Cursor, CursorQuery, id_page_links
from api.services import Services
from api.signed_access import stream_stored
from shared.inputs.json_nesting import nests_deeper_than, too_deep_problem
from shared.storage.files import FileRecord, render_file
from shared.storage.objects import file_key

router = APIRouter(prefix="/v1/files", tags=["files"])


def _owned_file(services: Services, file_id: str, tenant: str) -> FileRecord:
    record = services.files.get(file_id, tenant)
    if record is None:
        raise ProblemError(404, f"file {file_id!r} not found")
    return record


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["content"],
                    "additionalProperties": False,
                    "properties": {
                        "content": {"type": "string", "format": "binary"},
                        "metadata": {"type": "object", "description": "Anything to keep with the file."},
                    },
                },
                "encoding": {"metadata": {"contentType": "application/json"}},
            }
        },
    }
}


# ``metadata`` is kept with the file's record (in Redis) and shown by every read of it.
METADATA_MAX_BYTES = 64 * 1024
# What a multipart body holds besides the file and its metadata (boundaries, part headers), at most.
FRAMING_BYTES = 64 * 1024


def upload_body_limit(file_max_bytes: int) -> int:
    """The body cap of ``POST /v1/files``: a file at its cap, metadata at its own, and the framing."""
    return file_max_bytes + METADATA_MAX_BYTES + FRAMING_BYTES


def _metadata_too_large() -> ProblemError:
    return ProblemError(413, f"metadata is larger than {METADATA_MAX_BYTES} bytes")


async def _metadata(field: str | UploadFile | None) -> dict[str, Any]:
    """``metadata`` as a JSON object; the JS client sends it as a file part, the Python client as a field."""
    raw = await field.read(METADATA_MAX_BYTES + 1) if isinstance(field, UploadFile) else field
    size = len(raw.encode(errors="surrogatepass")) if isinstance(raw, str) else len(raw or b"")
    if size > METADATA_MAX_BYTES:
        raise _metadata_too_large()
    if raw and nests_deeper_than(raw):
        raise ProblemError(422, too_deep_problem("metadata"))
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:  # not JSON, not UTF-8, or an integer past Python's 4,300 digits
        parsed = None
    if not isinstance(parsed, dict):
        raise ProblemError(422, "metadata: must be a JSON object")
    reject_invalid_text(parsed, "metadata")
    return parsed


async def _upload_form(request: Request, file_max_bytes: int) -> FormData:
    """The upload's parts, as ``request.form`` reads them, but a file part kept in memory up to
    ``file_max_bytes``: it is read into memory whole anyway, and spooled to disk each 64 KiB chunk of it
    cost a hop to the threads reads run on (1,600 for a file of 100 MB), and a read of it back."""
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    limits: dict[str, Any] = {"max_files": 2, "max_fields": 4, "max_part_size": METADATA_MAX_BYTES + 1}
    try:
        if content_type != b"multipart/form-data":  # no file part: answered as such
            return await request.form(**limits)
        async with aclosing(request.stream()) as stream:
            parser = MultiPartParser(request.headers, stream, **limits)
            parser.spool_max_size = file_max_bytes + 1
            return await parser.parse()
    # A field past max_part_size: metadata is the one field read. request.form answers its parsers' errors
    # as 400 HTTPExceptions; the multipart parser raises them as they are.
    except HTTPException as exc:
        if "maximum size" in str(exc.detail):
            raise _metadata_too_large() from None
        raise
    except MultiPartException as exc:
        if "maximum size" in exc.message:
            raise _metadata_too_large() from None
        raise ProblemError(400, _malformed(exc)) from None


def _malformed(exc: MultiPartException) -> str:
    """Why the multipart body was refused: Starlette's message, and the parser's reason behind it."""
    reason = exc.__cause__
    if reason is None:
        return exc.message
    detail = f"{exc.message.rstrip('.')}: {reason}"
    if "header size" in str(reason):
        detail += f" (a part's header line, its file name included, is at most {DEFAULT_MAX_HEADER_SIZE} bytes)"
    return detail


@router.post("", status_code=201, openapi_extra=_UPLOAD_SCHEMA)
async def create_file(request: Request, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    """Multipart upload: ``content`` (the file) and optional ``metadata`` (a JSON object). Read, checked and
    stored within one of the token's upload slots (``api.lanes``)."""
    async with services.uploads.slot(tenant):
        form = await _upload_form(request, services.settings.file_max_bytes)
        try:
            record = await _store_upload(form, tenant, services)
        finally:
            await form.close()
    return render_file(record, base)


async def _store_upload(form: FormData, tenant: str, services: Services) -> FileRecord:
    content = form.get("content")
    if not isinstance(content, UploadFile):
        raise ProblemError(422, "content: a file part named 'content' is required")
    limit = services.settings.file_max_bytes
    data = await content.read(limit + 1)
    if len(data) > limit:
        raise ProblemError(413, f"content is larger than {limit} bytes")
    metadata = await _metadata(form.get("metadata"))
    reject_invalid_text({"filename": content.filename or "", "content_type": content.content_type or ""})
    return await services.uploads.on_thread(
        services.files.create,
        tenant,
        content.filename or "file",
        content.content_type or "application/octet-stream",
        data,
        metadata,
    )


@router.get("")
def list_files(
    tenant: CurrentTenant, services: ServicesDep, base: BaseURL, cursor: CursorQuery = None
) -> dict[str, Any]:
    """Newest first, in pages like ``GET /v1/predictions`` (``predictions_page_size``)."""
    at = Cursor.decode(cursor)
    records, more = services.files.list_for_tenant(
        tenant, services.settings.predictions_page_size, before=at.before, after=at.after
    )
    links = id_page_links(f"{base}/v1/files", at, [record.id for record in records], more)
    return links | {"results": [render_file(r, base) for r in records]}


@router.get("/{file_id}")
def get_file(file_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    return render_file(_owned_file(services, file_id, tenant), base)


@router.get("/{file_id}/download")
async def download_file(file_id: str, tenant: CurrentTenant, services: ServicesDep) -> StreamingResponse:
    record = await run_in_threadpool(_owned_file, services, file_id, tenant)
    return await stream_stored(
        services,
        tenant,
        file_key(record.id),
        f"file {file_id!r} not found",  # deleted since its record was read
        media_type=record.content_type,
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(record.name)}"},
    )


@router.delete("/{file_id}", status_code=204)
async def delete_file(file_id: str, tenant: CurrentTenant, services: ServicesDep) -> Response:
    record = await run_in_threadpool(_owned_file, services, file_id, tenant)
    await services.storage_lanes.run(tenant, services.files.delete, record)  # it waits for S3: on a storage lane
    return Response(status_code=204)
