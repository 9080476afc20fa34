"""Batch objects and batch items, for the stack tests that create and read them."""

from __future__ import annotations

import io
import json

import httpx
from PIL import Image

from tests.support import data_uri, wait_until


def tiny_image() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def item(seed: int = 0, **overrides) -> dict:
    """A fast valid item: 64x64, two denoising steps."""
    return {
        "version": "kiln/sd2-depth2img",
        "input": {"prompt": "batch", "input_image": tiny_image(), "num_inference_steps": 2, "seed": seed},
    } | overrides


def wait_for_batch(client: httpx.Client, batch_id: str, statuses: set[str], timeout: float = 300) -> dict:
    def ended():
        batch = client.get(f"/v1/batches/{batch_id}").json()
        return batch if batch["status"] in statuses else None

    return wait_until(ended, timeout, interval=0.5, what=f"batch {batch_id} to be {statuses}")


def results_of(client: httpx.Client, batch: dict) -> list[dict]:
    response = client.get(batch["urls"]["results"])
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]


def all_predictions(client: httpx.Client, batch: dict) -> list[dict]:
    """Every page of the batch's predictions (the stack's page size is small: this walks the cursor)."""
    found, url = [], batch["urls"]["predictions"]
    while url:
        page = client.get(url).json()
        found += page["results"]
        url = page["next"]
    return found


def all_prediction_ids(client: httpx.Client, first_page: str = "/v1/predictions") -> set[str]:
    """Every prediction id the tenant can list, following ``next`` to the end."""
    ids, url = set(), first_page
    while url:
        page = client.get(url).json()
        ids |= {p["id"] for p in page["results"]}
        url = page["next"]
    return ids
