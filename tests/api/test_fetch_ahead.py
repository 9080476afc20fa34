"""``api.intake.fetch_ahead.FetchAhead``: a batch's image URLs fetched several at once when a line needs
one, each once, at most ``ahead`` waiting to be taken, and a failed fetch raised to the line that takes it."""

from __future__ import annotations

import threading
import time

import pytest

from api.intake.fetch_ahead import FetchAhead
from shared.inputs.images import ImageInputError


class Fetches:
    """A fetch that records what it fetched and how many ran at once; ``failing`` URLs raise."""

    def __init__(self, failing: tuple[str, ...] = (), round_trip_s: float = 0.05) -> None:
        self.round_trip_s = round_trip_s
        self.fetched: list[str] = []
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()
        self.failing = failing

    def __call__(self, url: str) -> bytes:
        with self._lock:
            self.fetched.append(url)
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        time.sleep(self.round_trip_s)  # a round trip: the others of its group start meanwhile
        with self._lock:
            self._running -= 1
        if url in self.failing:
            raise ImageInputError(f"fetching {url} answered HTTP 404")
        return url.encode()


def urls(count: int) -> list[tuple[int, str]]:
    """``count`` URLs, the n-th first named by line 10 n."""
    return [(10 * n, f"https://images.test/{n}.png") for n in range(1, count + 1)]


def test_a_line_needing_a_url_fetches_it_with_the_next_ones_at_once():
    fetch = Fetches(round_trip_s=0.5)  # long enough for its group's threads to start on a busy machine
    ahead = FetchAhead(urls(20), fetch, ahead=4)
    ahead.reached(10)
    taken = ahead.take("https://images.test/1.png")
    assert taken is not None and taken.result() == b"https://images.test/1.png"
    assert fetch.fetched and sorted(fetch.fetched) == sorted(f"https://images.test/{n}.png" for n in range(1, 5))
    assert fetch.most_at_once > 1
    for n in range(2, 5):  # their lines take them: nothing is fetched again
        ahead.reached(10 * n)
        assert ahead.take(f"https://images.test/{n}.png") is not None
    assert len(fetch.fetched) == 4
    ahead.reached(50)
    assert ahead.take("https://images.test/5.png") is not None
    assert len(fetch.fetched) == 8, "the next group"


def test_each_url_is_fetched_once_and_every_line_gets_its_own_bytes():
    fetch = Fetches()
    wanted = urls(30)
    ahead = FetchAhead(wanted, fetch, ahead=8)
    for position, url in wanted:
        ahead.reached(position)
        taken = ahead.take(url)
        assert taken is not None and taken.result() == url.encode()
    assert sorted(fetch.fetched) == sorted(url for _, url in wanted)


def test_a_failed_fetch_raises_for_the_line_that_takes_it_only():
    fetch = Fetches(failing=("https://images.test/2.png",))
    ahead = FetchAhead(urls(3), fetch, ahead=8)
    ahead.reached(10)
    first = ahead.take("https://images.test/1.png")
    assert first is not None and first.result() == b"https://images.test/1.png"
    ahead.reached(20)
    failed = ahead.take("https://images.test/2.png")
    assert failed is not None
    with pytest.raises(ImageInputError, match="HTTP 404"):
        failed.result()
    ahead.reached(30)
    third = ahead.take("https://images.test/3.png")
    assert third is not None and third.result() == b"https://images.test/3.png"


def test_no_more_than_ahead_images_wait_to_be_taken():
    fetch = Fetches()
    ahead = FetchAhead(urls(20), fetch, ahead=3)
    ahead.reached(10)
    assert ahead.take("https://images.test/1.png") is not None
    assert len(fetch.fetched) == 3
    # Line 20 was refused before reading its image: line 30 needs 3, fetched already; still 3 fetched.
    ahead.reached(30)
    assert ahead.take("https://images.test/3.png") is not None
    assert len(fetch.fetched) == 3
    ahead.reached(40)
    assert ahead.take("https://images.test/4.png") is not None
    assert len(fetch.fetched) == 6, "2 was dropped when its line was passed: room for 3 more"


def test_a_fetch_whose_line_was_passed_is_dropped_and_fetched_again_by_a_later_line():
    fetch = Fetches()
    ahead = FetchAhead([(10, "https://images.test/a.png"), (20, "https://images.test/b.png")], fetch, ahead=8)
    ahead.reached(10)
    assert ahead.take("https://images.test/a.png") is not None
    ahead.reached(25)  # line 20 never read b
    assert ahead.take("https://images.test/b.png") is None, "the caller fetches it itself"


def test_a_url_not_wanted_fetches_nothing():
    fetch = Fetches()
    ahead = FetchAhead(urls(3), fetch, ahead=8)
    ahead.reached(1)
    assert ahead.take("https://elsewhere.test/x.png") is None
    assert fetch.fetched == []
