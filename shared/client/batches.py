"""``kiln batch submit|get|cancel``: a JSONL file of create bodies as one batch (``/v1/batches``).

``submit`` uploads the file (Files API) and creates the batch from it (``input_file``); each line is
a create body (``version`` or ``model``, ``input``, ...). With ``--model`` a line may also be just an
input object, and a body without ``version``/``model`` gets that model: the file is rewritten line
by line before the upload, blank and unreadable lines kept as they are, so the API's line numbers
(refused items name theirs) still match the file's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shared.client.display import Display
from shared.client.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from shared.client.http import KilnClient
from shared.client.inputs import check_model

ENDED = frozenset({"completed", "canceled"})
# Item counts that are not a success.
NOT_SUCCEEDED = ("failed", "canceled", "aborted", "invalid")
ENDED_ITEMS = ("succeeded", *NOT_SUCCEEDED)
POLL_S = 1.0


def with_model(data: bytes, model: str) -> bytes:
    """Each line given ``model`` (as ``version``) unless it names one; a line with none of ``input``,
    ``version`` and ``model`` is the input itself."""
    return b"\n".join(_line_with_model(line, model) for line in data.split(b"\n"))


def _line_with_model(line: bytes, model: str) -> bytes:
    try:
        item = json.loads(line) if line.strip() else None
    except (ValueError, RecursionError):
        return line  # the API reports it, with its line number
    if not isinstance(item, dict):
        return line
    if not {"input", "version", "model"} & item.keys():
        item = {"input": item}
    if "version" not in item and "model" not in item:
        item = {"version": model} | item
    return json.dumps(item).encode()


def submit(
    client: KilnClient, display: Display, path: Path, model: str | None, wait: bool, results: Path | None
) -> int:
    """Upload ``path`` and create a batch from it; print its id. With ``wait`` (or ``results``) follow it
    to its end, then write its results file; 0 only when every item succeeded (so far, without waiting)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if results is not None and not results.parent.is_dir():
        raise UsageError(f"--results {results}: no directory {results.parent}")
    if model is not None:
        data = with_model(data, check_model(model))
    uploaded = client.upload(path.name, data, "application/jsonl")
    batch = client.create_batch(str(uploaded["urls"]["get"]))
    print(batch["id"], flush=True)
    counts = batch.get("counts") or {}
    display.note(f"batch {batch['id']}: {counts.get('total', 0)} items, {counts.get('invalid', 0)} refused")
    if wait or results is not None:
        try:
            batch = follow(client, display, batch)
        except KeyboardInterrupt:
            display.warn(f"interrupted: batch {batch['id']} goes on (`kiln batch cancel {batch['id']}`)")
            return EXIT_INTERRUPTED
        if results is not None:
            client.save_results(batch["id"], results)
            display.note(f"results: {results}")
    return outcome(display, batch)


def follow(client: KilnClient, display: Display, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch once it has ended, a bar of its ended items meanwhile."""
    with display.batch(batch["id"]) as bar:
        while True:
            bar.update(batch, ended_items(batch))
            if batch["status"] in ENDED:
                return batch
            time.sleep(POLL_S)
            batch = client.batch(batch["id"])


def ended_items(batch: dict[str, Any]) -> int:
    counts = batch.get("counts") or {}
    return sum(int(counts.get(status, 0)) for status in ENDED_ITEMS)


def outcome(display: Display, batch: dict[str, Any]) -> int:
    """1 when an item failed, was canceled, aborted or refused, or the batch was canceled; else 0."""
    counts = batch.get("counts") or {}
    bad = {status: counts[status] for status in NOT_SUCCEEDED if counts.get(status)}
    if not bad and batch.get("status") != "canceled":
        return EXIT_OK
    shown = ", ".join(f"{number} {status}" for status, number in bad.items())
    display.warn(f"batch {batch['id']} {batch.get('status')}" + (f": {shown}" if shown else ""))
    return EXIT_FAILED
