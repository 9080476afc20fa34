"""A batch's image URLs fetched several at once: the one a line needs and the next ones wanted.

A batch file's lines are checked in turn, and each image URL was fetched when the first line naming it
was checked, one round trip after another (a 100,000-line file naming 300 URLs: about a second of each
intake process's time on loopback; at an internet round trip, minutes). ``FetchAhead`` knows which URLs
the lines name (``api.intake.batch_file`` finds them before checking); when a line reads a URL not
fetched yet, that URL and the next ``FETCH_AHEAD - 1`` wanted are fetched at once, on threads of
``FETCH_THREADS``, and the line waits for them all. A later line naming one of those takes its fetch:
its bytes, or the ``ImageInputError`` it raised, as if fetched then. Nothing else changes: the same
guarded fetch (``api.intake.image_staging.fetch_image``), each URL fetched once per process, its bytes
checked and stored by the line that takes them. No fetch runs while lines are checked: threads that
wait on sockets beside a thread checking lines would wait for the GIL at every step.

At most ``FETCH_AHEAD`` fetched images wait to be taken (each up to ``KILN_IMAGE_FETCH_MAX_BYTES``); one
whose first line was passed without taking it (that line was refused before its images were read) is
dropped, and a later line naming the URL fetches it itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cache

# Image fetches of one intake process running at once (round trips: threads wait, they do not compute).
FETCH_THREADS = 8
# Images fetched and not yet taken by their line, at most (the one a line needs included).
FETCH_AHEAD = 8


@cache
def _fetches() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="batch-fetches")


class FetchAhead:
    """The URLs of a batch's lines to fetch ahead (``wanted``: each with the position of the first line
    naming it, in position order) and ``fetch``, which fetches one (raising what a line would be refused
    for). ``reached(position)`` before each line is checked; ``take(url)`` when a line reads the URL."""

    def __init__(self, wanted: Iterable[tuple[int, str]], fetch: Callable[[str], bytes], ahead: int = FETCH_AHEAD):
        self._wanted = deque(wanted)
        self._waiting = {url for _, url in self._wanted}
        self._fetch = fetch
        self._ahead = ahead
        self._position = 0
        # Fetched and not yet taken, in position order: (first position, url), and each url's fetch.
        self._order: deque[tuple[int, str]] = deque()
        self._fetched: dict[str, Future[bytes]] = {}

    def reached(self, position: int) -> None:
        """The line at ``position`` is checked next: what lines before it fetched and did not take goes."""
        self._position = position
        order = self._order
        while order and order[0][0] < position:
            self._fetched.pop(order.popleft()[1], None)

    def take(self, url: str) -> Future[bytes] | None:
        """``url``'s fetch, done (None: it is not one to fetch ahead; the caller fetches it itself). A URL
        not fetched yet is fetched with the next ones wanted, at once."""
        if url in self._waiting:
            self._fetch_next(url)
        return self._fetched.pop(url, None)

    def _fetch_next(self, url: str) -> None:
        """``url`` and the next URLs wanted from the line reached on, fetched at once: as many as keep
        ``ahead`` fetched and not taken, at most (``url`` is taken at once)."""
        self._waiting.discard(url)
        batch: list[tuple[int, str]] = []
        while self._wanted and len(self._fetched) + len(batch) + 1 < self._ahead:
            first, wanted = self._wanted.popleft()
            if first >= self._position and wanted in self._waiting:
                self._waiting.discard(wanted)
                batch.append((first, wanted))
        fetches = {wanted: _fetches().submit(self._fetch, wanted) for wanted in (url, *(u for _, u in batch))}
        wait(fetches.values())
        self._order.extend(batch)  # after those fetched before: the order stays the lines' order
        self._fetched.update(fetches)
