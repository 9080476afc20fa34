"""The HTTP API: a thin, stateless shell over the prediction store and the queue.

Run with ``uvicorn api.app:create_app --factory``. Never imports torch or diffusers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.intake.batch_pool import IntakePool
from api.intake.body_limit import BodyLimitMiddleware
from api.log_context import PredictionLogContext
from api.openapi.document import install_openapi
from api.query_values import SingleQueryValues
from api.ratelimit import RateLimitHeaders
from api.routes import (
    batches,
    catalog,
    deployments,
    files,
    health,
    metrics,
    models,
    predictions,
    queue,
    webhooks,
)
from api.routes.direct_creates import direct_create_routes
from api.routes.files import upload_body_limit
from api.routes.playground import install_playground
from api.services import Services
from shared.runtime.logs import configure_logging
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.token_digests:
            logging.getLogger(__name__).warning(
                "KILN_API_TOKEN is empty: only tokens made with `kiln tokens create` are accepted"
            )
        app.state.services = Services.connect(settings)
        app.state.intake_pool = IntakePool(settings)
        if settings.batch_intake_warm:
            app.state.intake_pool.warm()
        await app.state.services.start()
        try:
            yield
        finally:
            app.state.intake_pool.close()
            await app.state.services.close()

    app = FastAPI(title="Kiln", version="0.1.0", lifespan=lifespan)
    # Uploads have their own, larger cap (a file at its cap, its metadata at its own, the multipart framing).
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_request_bytes,
        limits_by_prefix={"/v1/files": upload_body_limit(settings.file_max_bytes)},
    )
    app.add_middleware(PredictionLogContext)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(SingleQueryValues)
    install_error_handlers(app)
    # Plain single creates first, without FastAPI's request handling (the rest is handed back to its routes).
    app.router.routes.extend(direct_create_routes(app.router))
    # Predictions first: FastAPI matches a request against every route of each router before its own, and
    # the creates are the busiest requests (no path of one router is a path of another).
    app.include_router(predictions.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(catalog.router)
    app.include_router(deployments.router)
    app.include_router(files.router)
    app.include_router(queue.router)
    install_playground(app)
    install_openapi(app)
    return app
