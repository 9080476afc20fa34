"""Where ``POST /v1/batches`` does its work: processes of their own, so validating a 100,000-line
file never holds the API process's GIL, and its event loop and request threads keep serving every
other tenant at their usual speed.

Each process (started on first use, ``spawn``: nothing of the API's event loop is inherited) has
its own ``Services``. A request's arguments go in, the stored batch (or the problem to answer with)
comes back, with the predictions it counted as created, which the API process's metrics then show;
anything else that went wrong comes back as ``IntakeFailed`` (a 500)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.util
import os
import pickle
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from api.errors import ProblemError
from api.services import Services
from shared.batches.records import Batch
from shared.runtime import metrics
from shared.runtime.logs import configure_logging
from shared.settings import Settings

T = TypeVar("T")

# Batch creates validated at once; more wait their turn (each one is CPU-bound).
PROCESSES = 2
# What an intake process's first batch runs, and what its helper's first share does: imported as each
# process starts (importing them took a first 100,000-line file's helper 0.2-0.3 s while its intake waited).
INTAKE_MODULES = ("api.routes.batches",)
HELPER_MODULES = ("api.intake.batch_file",)

_services: Services | None = None
# This intake process's helper (``helper``): one more process, on the machine's other core.
_helper: ProcessPoolExecutor | None = None
# A helper's settings (it connects on its first work).
_helper_settings: Settings | None = None
# The settings this intake process starts its helpers with.
_helper_settings_of: Settings | None = None


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


# How much less CPU priority intake and helper processes take than the API process: when the machine's
# cores are all busy, the API's event loop (every other tenant's requests) is served first.
NICENESS = 5


def _start(settings: Settings) -> None:
    global _services, _helper, _helper_settings_of
    os.nice(NICENESS)
    configure_logging(settings)
    _services = Services.connect(settings)
    _import(INTAKE_MODULES)
    _helper = helper_pool(settings)
    _helper_settings_of = settings
    # Started and connected now, in the background, not on the first large batch (connecting, its S3
    # client most of all, took the first 100,000-line file's helper 0.3-0.5 s while its intake waited).
    _helper.submit(helped, _connected)
    # Stopped as this process ends, before its queues close (their finalizers' priority is 10) and
    # multiprocessing waits for its children, which would otherwise wait for work for ever.
    multiprocessing.util.Finalize(None, _stop_helper, exitpriority=100)


def _stop_helper() -> None:
    if _helper is not None:
        _helper.shutdown(cancel_futures=True)


def _start_helper(settings: Settings) -> None:
    """A helper connects on its first work (its intake process sends one at once, ``_connected``), not
    here: one started as its intake process stops (a pool closed at once) then exits as soon as it is
    told, however long Redis would take to answer."""
    global _helper_settings
    os.nice(NICENESS)
    configure_logging(settings)
    _helper_settings = settings
    parent = multiprocessing.parent_process()
    if parent is not None:  # an intake process killed outright leaves no helper behind
        threading.Thread(target=_exit_after, args=(parent,), daemon=True, name="helper-parent").start()


def _exit_after(parent: BaseProcess) -> None:
    parent.join()
    os._exit(0)


def helper_pool(settings: Settings) -> ProcessPoolExecutor:
    """One process (``spawn``, its own ``Services``) that a large batch's validation shares its lines
    with (``api.intake.batch_file.validate_all``): validating is CPU-bound, and one process uses one core."""
    return ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=_start_helper, initargs=(settings,))


def helper() -> ProcessPoolExecutor | None:
    """This intake process's helper; None in any other process (the API's, a test's)."""
    return _helper


def replace_helper() -> None:
    """A new helper for one found broken (its process died): the next large batch is shared again."""
    global _helper
    if _helper is None or _helper_settings_of is None:
        return
    _helper.shutdown(wait=False, cancel_futures=True)
    _helper = helper_pool(_helper_settings_of)


def helped(work: Callable[..., T], *args: Any) -> T:
    """``work(services, *args)`` in a helper process (submitted to ``helper_pool``)."""
    global _services
    if _services is None:
        assert _helper_settings is not None  # set by the pool's initializer
        _services = Services.connect(_helper_settings)
    with collection_paused():
        return work(_services, *args)


class ShareNotHandedOver(Exception):
    """A share's file could not be written (the temp directory full or read-only): validate it here."""


@contextlib.contextmanager
def handed_over(value: Any) -> Iterator[str]:
    """``value`` pickled into a private temporary file, whose path a helper reads it from (``taken``);
    deleted on leaving. A large share (50,000 lines, ~12 MB) sent as an argument crossed the pool's
    pipe 64 KB at a time from a thread of this process, each write waiting for the GIL that this
    process's own validation held: ~0.3 s more before the helper could start. One write here takes ~30 ms.
    ``ShareNotHandedOver`` when the file cannot be written."""
    try:
        fd, path = tempfile.mkstemp(prefix="kiln-share-", suffix=".pickle")  # readable by this user alone
    except OSError as exc:
        raise ShareNotHandedOver(str(exc)) from exc
    try:
        try:
            with os.fdopen(fd, "wb") as file:
                pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as exc:
            raise ShareNotHandedOver(str(exc)) from exc
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def taken(path: str) -> Any:
    """What ``handed_over`` wrote at ``path``; the file is deleted once read (so an intake process killed
    outright meanwhile leaves none behind)."""
    with open(path, "rb") as file:
        value = pickle.load(file)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return value


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: a 100,000-line batch keeps hundreds of thousands of
    objects alive, and each full collection would walk them all, for no garbage (its objects form no
    cycles). Only in the processes of this module, which do nothing else while a batch is validated."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
        with collection_paused():
            found: tuple[Batch, bool] | Problem | str = work(_services, *args)
    except ProblemError as exc:
        found = Problem(exc.status, exc.detail, exc.headers, exc.extra)
    except Exception as exc:  # crosses back as text: not every exception pickles
        found = f"{type(exc).__name__}: {exc}"
    return found, _created() - before


def _ready() -> bool:
    return _services is not None


def _connected(_: Services) -> bool:
    """Work for a helper that connects it (``helped``) and imports what its shares run."""
    _import(HELPER_MODULES)
    return True


def _import(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


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
