"""Progress on the terminal (rich): bars when stdout is a terminal, none when a script reads it.

Bars and notes go to stderr; stdout carries only what a script reads (paths, ids, JSON).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

# The "n/total" of the progress line a worker logs per denoising step (tqdm's meter).
STEP = re.compile(r"(\d+)/(\d+) \[")


class Display:
    def __init__(self, live: bool | None = None, console: Console | None = None) -> None:
        self.live = sys.stdout.isatty() if live is None else live
        self.console = console or Console(stderr=True, highlight=False)

    def note(self, text: str) -> None:
        """A line for the person watching (on a terminal only)."""
        if self.live:
            self.console.print(escape(text))

    def warn(self, text: str) -> None:
        """A line that matters to a script's log too: always shown, on stderr."""
        self.console.print(escape(text), style="yellow" if self.live else None)

    def progress(self) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.live,
        )

    @contextmanager
    def prediction(self, prediction_id: str) -> Iterator[PredictionBar]:
        with self.progress() as progress:
            yield PredictionBar(
                progress, progress.add_task(escape(f"{prediction_id} starting"), total=None), prediction_id
            )

    @contextmanager
    def batch(self, batch_id: str) -> Iterator[BatchBar]:
        with self.progress() as progress:
            yield BatchBar(progress, progress.add_task(escape(f"batch {batch_id}"), total=None), batch_id)


class PredictionBar:
    """One prediction's status and denoising steps, as its stream or polling reports them."""

    def __init__(self, progress: Progress, task: TaskID, prediction_id: str) -> None:
        self.progress, self.task, self.prediction_id = progress, task, prediction_id
        self.steps: int | None = None

    def status(self, status: str) -> None:
        self.progress.update(self.task, description=escape(f"{self.prediction_id} {status}"))

    def log(self, line: str) -> None:
        """A log line: a step's progress moves the bar; any other line is printed above it."""
        found = STEP.search(line)
        if found:
            self.step(int(found[1]), int(found[2]))
        elif line.strip() and not self.progress.disable:
            self.progress.console.print(escape(line), style="dim")

    def logs(self, text: Any) -> None:
        """The latest step in a prediction's whole ``logs`` (when polling)."""
        steps = STEP.findall(text) if isinstance(text, str) else []
        if steps:
            self.step(int(steps[-1][0]), int(steps[-1][1]))

    def step(self, done: int, steps: int) -> None:
        self.steps = steps
        self.progress.update(self.task, completed=done, total=steps)

    def succeeded(self) -> None:
        """A full bar: the last step's line may not have been read before the prediction ended."""
        self.status("succeeded")
        if self.steps:
            self.progress.update(self.task, completed=self.steps)


class BatchBar:
    """A batch's items ended (of its total) and its status, as polling reports them."""

    def __init__(self, progress: Progress, task: TaskID, batch_id: str) -> None:
        self.progress, self.task, self.batch_id = progress, task, batch_id

    def update(self, batch: dict[str, Any], ended: int) -> None:
        counts = batch.get("counts") or {}
        failed = sum(counts.get(status, 0) for status in ("failed", "canceled", "aborted", "invalid"))
        text = f"batch {self.batch_id} {batch.get('status')}" + (f" ({failed} not succeeded)" if failed else "")
        self.progress.update(self.task, description=escape(text), completed=ended, total=counts.get("total") or None)
