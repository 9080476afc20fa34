"""What the batch routes answer besides the batch object: its predictions, its results file, its cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from api.errors import ProblemError
from api.services import Services
from shared.batches.counts import CANCELED, COMPLETED
from shared.batches.records import Batch, RefusedItem
from shared.predictions.record import Prediction
from shared.predictions.status import Status


def result_line(
    entry: str | RefusedItem, position: int, found: dict[str, Prediction], services: Services, base: str
) -> dict[str, Any]:
    """One line of the results file: the item's prediction as it is now, or why it was refused."""
    if isinstance(entry, RefusedItem):
        return {
            "line": entry.line,
            "id": None,
            "status": "invalid",
            "output": None,
            "error": entry.problem.get("detail"),
            "problem": entry.problem,
            "metrics": {},
        }
    prediction = found.get(entry)
    if prediction is None:  # expired with its record
        return {"line": position, "id": entry, "status": "expired", "output": None, "error": None, "metrics": {}}
    rendered = services.render(prediction, base, with_position=False)  # a line has no queue position
    return {
        "line": position,
        "id": prediction.id,
        "status": rendered["status"],
        "output": rendered["output"],
        "error": rendered["error"],
        "metrics": rendered["metrics"],
    }


def results_file(services: Services, batch: Batch, base: str) -> Iterator[bytes]:
    """The results as JSONL, one line per item in submission order, read a page at a time. Items
    still running show their current status: the file can be read while the batch runs."""
    position = 0
    for page in services.batches.iter_items(batch.id):
        ids = [e for e in page if isinstance(e, str)]
        found = {p.id: p for p in services.store.get_many(ids)}
        lines = []
        for entry in page:
            position += 1
            line = result_line(entry, position, found, services, base)
            lines.append(orjson.dumps(line) + b"\n")
        yield b"".join(lines)


def batch_predictions(services: Services, batch: Batch, start: int, count: int) -> tuple[list[Prediction], bool]:
    """The predictions among items ``start`` .. ``start + count - 1``, and whether more items follow."""
    page = services.batches.items(batch.id, start, count + 1)
    more = len(page) > count
    ids = [e for e in page[:count] if isinstance(e, str)]
    return services.store.get_many(ids), more


def cancel_batch(services: Services, batch: Batch) -> None:
    """Every unfinished item: a queued one ends ``canceled`` now, a running one at its next step (the
    cancel path of single predictions). The batch ends ``canceled`` once the last item has ended."""
    if not services.batches.flag_cancel(batch.id):  # expired since it was read
        raise ProblemError(404, f"batch {batch.id!r} not found")
    for page in services.batches.iter_items(batch.id):
        cancel_items(services, [e for e in page if isinstance(e, str)])
    services.batch_settler.settle()


def cancel_items(services: Services, prediction_ids: list[str]) -> None:
    """Cancel those of the predictions that have not ended (queued now, running at their next step)."""
    services.lifecycle.cancel_many([p for p in services.store.get_many(prediction_ids) if not p.status.is_terminal()])


def remove_batch_data(services: Services, batch: Batch) -> None:
    """Every item's data (``DataRemoval``, a page of items at a time), then the inputs the items share,
    and the batch marked ``data_removed``. A 409 while any item is queued or running, or the batch is
    still validating. Repeated after a failure, it does the rest; once done, nothing."""
    if batch.status not in (COMPLETED, CANCELED):
        unfinished = sum(batch.counts.get(s.value, 0) for s in Status if not s.is_terminal())
        raise ProblemError(
            409,
            f"batch {batch.id!r} is still {batch.shown_status} ({unfinished} items queued or running): cancel it "
            f"first (POST /v1/batches/{batch.id}/cancel), then delete its data once every item has ended",
        )
    if batch.data_removed:
        return
    for page in services.batches.iter_items(batch.id):
        services.data_removal.remove([e for e in page if isinstance(e, str)])
    services.data_removal.remove_batch_inputs(batch.id)
