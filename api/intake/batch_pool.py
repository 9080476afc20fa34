"""Where ``POST /v1/batches`` does its work: processes of their own, so validating a 100,000-line
file never holds the API process's GIL, and its event loop and request threads keep serving every
other tenant at their usual speed.

Each process (started on first use, ``spawn``: nothing of the API's event loop is inherited) has
its own ``Services``. A request's arguments go in, the stored batch (or the problem to answer with)
comes back, with the predictions it counted as created, which the API process's metrics then show;
anything else that went wrong comes back as ``IntakeFailed`` (a 500)."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from api.errors import ProblemError
from api.services import Services
from shared.batches.records import Batch
from shared.runtime import metrics
from shared.runtime.logs import configure_logging
from shared.settings import Settings

# Batch creates validated at once; more wait their turn (each one is CPU-bound).
PROCESSES = 2

_services: Services | None = None


@dataclass(frozen=True)
class Problem:
    """A ``ProblemError``, in a form that crosses processes."""

    status: int
    detail: str
    headers: dict[str, str] | None
    extra: dict[str, Any]

    def error(self) -> ProblemError:
        return ProblemError(self.status, self.detail, headers=self.headers, **self.extra)


class IntakeFailed(Exception):
    """The intake process failed unexpectedly (the batch was ended there: ``api.intake.batch_file``)."""


def _start(settings: Settings) -> None:
    global _services
    configure_logging(settings)
    _services = Services.connect(settings)


def _created() -> Counter[str]:
    """This process's ``kiln_predictions_created``, by model."""
    return Counter(
        {
            sample.labels["model"]: int(sample.value)
            for metric in metrics.PREDICTIONS_CREATED.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    )


def _run(
    work: Callable[..., tuple[Batch, bool]], *args: Any
) -> tuple[tuple[Batch, bool] | Problem | str, Counter[str]]:
    assert _services is not None  # set by the pool's initializer
    before = _created()
    try:
        found: tuple[Batch, bool] | Problem | str = work(_services, *args)
    except ProblemError as exc:
        found = Problem(exc.status, exc.detail, exc.headers, exc.extra)
    except Exception as exc:  # crosses back as text: not every exception pickles
        found = f"{type(exc).__name__}: {exc}"
    return found, _created() - before


def _ready() -> bool:
    return _services is not None


class IntakePool:
    def __init__(self, settings: Settings, processes: int = PROCESSES) -> None:
        self.settings = settings
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes, multiprocessing.get_context("spawn"), initializer=_start, initargs=(self.settings,)
            )
        return self._pool

    def warm(self) -> None:
        """Start an intake process now, in the background, rather than on the first batch."""
        self._executor().submit(_ready)

    async def run(self, work: Callable[..., tuple[Batch, bool]], *args: Any) -> tuple[Batch, bool]:
        """``work(services, *args)`` in an intake process; its ``ProblemError`` raised here."""
        found, created = await asyncio.get_running_loop().run_in_executor(self._executor(), _run, work, *args)
        metrics.record_created_counts(created)
        if isinstance(found, Problem):
            raise found.error()
        if isinstance(found, str):
            raise IntakeFailed(found)
        return found

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
