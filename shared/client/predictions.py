"""``kiln run`` (create a prediction, follow it, download its outputs) and ``kiln predictions ...``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.client.display import Display, PredictionBar
from shared.client.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ClientError, UsageError
from shared.client.http import KilnClient
from shared.client.inputs import check_model, parse_inputs

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Polling, when the stream is not there: the first wait, and the longest.
POLL_FIRST_S, POLL_MAX_S = 0.5, 2.0


def run_model(client: KilnClient, display: Display, model: str, pairs: list[str], out_dir: Path) -> int:
    """Create a prediction of ``model``, follow it to its end, save its output files in ``out_dir``
    and print their paths; 0 when it succeeded, 1 when it failed or was canceled."""
    check_model(model)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: not a directory")
    inputs = parse_inputs(pairs, lambda name, data, kind: str(client.upload(name, data, kind)["urls"]["get"]))
    created = client.create_prediction(model, inputs)
    display.note(f"prediction {created['id']}: {(created.get('urls') or {}).get('web', '')}")
    try:
        final = follow(client, display, created)
    except KeyboardInterrupt:
        display.warn(f"interrupted: prediction {created['id']} goes on (`kiln predictions cancel {created['id']}`)")
        return EXIT_INTERRUPTED
    if final["status"] != "succeeded":
        display.warn(
            f"prediction {final['id']} {final['status']}" + (f": {final['error']}" if final.get("error") else "")
        )
        return EXIT_FAILED
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(outputs_of(final)):
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            print(str(client.download(value, out_dir, file_name(value, index))))
        else:
            print(json.dumps(value))
    return EXIT_OK


def follow(client: KilnClient, display: Display, prediction: dict[str, Any]) -> dict[str, Any]:
    """The prediction once it has ended, its progress shown meanwhile: from its stream (``urls.stream``),
    then by polling (what the stream could not tell, or all of it when the stream is refused)."""
    with display.prediction(prediction["id"]) as bar:
        stream = (prediction.get("urls") or {}).get("stream")
        if stream and prediction["status"] not in TERMINAL:
            try:
                watch_stream(client, stream, bar)
            except ClientError as exc:
                display.note(f"following by polling: {exc}")
        return poll(client, prediction["id"], bar)


def watch_stream(client: KilnClient, stream_url: str, bar: PredictionBar) -> None:
    for event in client.events(stream_url):
        if event.event == "status":
            bar.status(event.data)
        elif event.event == "logs":
            bar.log(event.data)
        elif event.event == "done":
            return


def poll(client: KilnClient, prediction_id: str, bar: PredictionBar) -> dict[str, Any]:
    wait = POLL_FIRST_S
    while True:
        prediction = client.prediction(prediction_id)
        bar.status(str(prediction["status"]))
        bar.logs(prediction.get("logs"))
        if prediction["status"] == "succeeded":
            bar.succeeded()
        if prediction["status"] in TERMINAL:
            return prediction
        time.sleep(wait)
        wait = min(wait * 1.5, POLL_MAX_S)


def outputs_of(prediction: dict[str, Any]) -> list[Any]:
    output = prediction.get("output")
    if output is None:
        return []
    return output if isinstance(output, list) else [output]


def file_name(url: str, index: int) -> str:
    """The output file's own name (``out-0.png``), never a path; ``output-N`` when the URL has none."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if name in {"", ".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        return f"output-{index}"
    return name


def list_predictions(client: KilnClient, limit: int, as_json: bool) -> int:
    """The newest ``limit`` predictions: id, status, model and creation time, tab-separated (or JSON lines)."""
    for prediction in islice(client.pages("/v1/predictions"), limit):
        print(json.dumps(prediction) if as_json else "\t".join(summary(prediction)))
    return EXIT_OK


def summary(prediction: dict[str, Any]) -> Iterator[str]:
    for key in ("id", "status", "model", "created_at"):
        yield str(prediction.get(key) or "-")


def show_object(found: dict[str, Any]) -> int:
    print(json.dumps(found, indent=2))
    return EXIT_OK
