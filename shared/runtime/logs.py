"""Log lines for people (text) or for log collectors (JSON, one object per line), each carrying the
id of the prediction being worked on.

The id lives in a context variable: a Celery task binds it for the prediction it runs (each thread
of the webhook worker has its own), and every record logged meanwhile gets a ``prediction_id``
field, so a collector can gather everything one prediction did across the API and the workers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

from pythonjsonlogger.orjson import OrjsonFormatter

from shared.settings import Settings

current_prediction_id: ContextVar[str | None] = ContextVar("current_prediction_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Standard record attributes kept in each JSON line; anything passed in ``extra=`` is added too.
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(prediction_id)s"
# uvicorn's loggers bring their own handlers; in JSON mode they go through ours instead.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@contextmanager
def bound_prediction(prediction_id: str | None) -> Iterator[None]:
    """Tag every record logged inside the block (in this thread or task) with ``prediction_id``."""
    token = current_prediction_id.set(prediction_id)
    try:
        yield
    finally:
        current_prediction_id.reset(token)


class PredictionIdFilter(logging.Filter):
    """Adds ``record.prediction_id`` (None outside a prediction) unless the call passed its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "prediction_id", None) is None:
            record.prediction_id = current_prediction_id.get()
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        # "time": ISO 8601 in UTC, as collectors expect. orjson: the stdlib encoder made formatting each
        # access log line (one per request) cost six times as much, a tenth of a single create's CPU.
        return OrjsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"}, timestamp="time")
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}: use 'text' or 'json' (KILN_LOG_FORMAT)")


def apply_format(handlers: Iterable[logging.Handler], log_format: str) -> None:
    """Give existing handlers (Celery's, uvicorn's) our formatter and the prediction id filter."""
    formatter = make_formatter(log_format)
    for handler in handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, PredictionIdFilter) for f in handler.filters):
            handler.addFilter(PredictionIdFilter())


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test runners swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]  # read-only on purpose: always the current stderr
        return sys.stderr


def configure_logging(settings: Settings) -> None:
    """Route the root logger (and, in JSON mode, uvicorn's) to one stderr handler in the configured format."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        root.addHandler(handler)
    apply_format([handler], settings.log_format)
    root.setLevel(settings.log_level)
    if settings.log_format == "json":
        for name in UVICORN_LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
