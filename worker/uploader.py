"""Where finished jobs are uploaded and their predictions ended, in line or in a side thread.

In a side thread the GPU starts the next job while the last one's images are encoded and uploaded.
A job still completes only after its upload succeeded, under its own lease (its heartbeat runs
until then); at most ``max_pending`` jobs wait, so a slow object store slows the worker down
instead of filling its memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger(__name__)


class Uploader:
    def __init__(self, asynchronous: bool, max_pending: int = 2) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="upload") if asynchronous else None
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, upload_and_finish: Callable[[], object]) -> None:
        """Run a finished job's upload-and-finish step, in line or in the side thread."""
        if self._executor is None:
            upload_and_finish()
            return
        self._slots.acquire()
        future = self._executor.submit(upload_and_finish)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()
        if not future.cancelled() and future.exception() is not None:
            log.error("uploading and finishing a job failed", exc_info=future.exception())

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for every submitted upload; False if some were still running after ``timeout_s``."""
        with self._lock:
            pending = set(self._pending)
        return not wait(pending, timeout=timeout_s).not_done
