"""The plainest create anyone would write, as ``make bench``'s yardstick for Kiln's single create.

FastAPI, the body validated by pydantic against the same model input schema Kiln uses
(``kiln/ip-adapter-depth-xl``'s), one Redis write (the body as JSON under a new id), 201 with the
id. No auth, no queue caps, no image checks, no enqueue, no idempotency: what Kiln's create costs
beyond this is what its guarantees cost. ``make bench`` serves it with uvicorn on a free port and
hammers it with the same client, concurrency and body as Kiln's create.

Run: ``PLAIN_REDIS_URL=redis://... uvicorn tools.plain_create:create_app --factory --port N``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio
from fastapi import FastAPI
from pydantic import BaseModel

from deploy.devstack.servers import free_port
from models.sdxl_family.schema import IPAdapterXLInput
from tests.support import python, wait_until
from tests.support.stack import Stack


class CreateBody(BaseModel):
    input: IPAdapterXLInput


def create_app() -> FastAPI:
    client = redis.asyncio.Redis.from_url(os.environ["PLAIN_REDIS_URL"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/models/{owner}/{name}/predictions", status_code=201)
    async def create(owner: str, name: str, body: CreateBody) -> dict[str, Any]:
        prediction_id = uuid.uuid4().hex
        await client.set(f"plain:{prediction_id}", body.model_dump_json(exclude_unset=True), ex=3600)
        return {"id": prediction_id, "model": f"{owner}/{name}", "status": "starting"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def start(stack: Stack) -> str:
    """Serve the plain create beside ``stack`` (same Redis; uvicorn as the stack serves Kiln's API), as
    one of the stack's processes (stopped with it); returns its base URL once it answers."""
    port = free_port()
    argv = [python(), "-m", "uvicorn", "tools.plain_create:create_app", "--factory", "--host", "127.0.0.1"]
    stack.start("plain-create", [*argv, "--port", str(port)], {"PLAIN_REDIS_URL": stack.redis_url})
    base_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base_url), 60, what="the plain create app")
    return base_url


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
