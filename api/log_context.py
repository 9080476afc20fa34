"""Tags the log records of a request about one prediction (``/v1/predictions/{id}...``) with its id."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.runtime.logs import bound_prediction

_PREDICTION_PATH = re.compile(r"^/v1/predictions/([0-9a-z]{26})(?:/|$)")


class PredictionLogContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PREDICTION_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        # Sync routes run in a worker thread with a copy of this context, so they see the id too.
        with bound_prediction(match.group(1)):
            await self.app(scope, receive, send)
