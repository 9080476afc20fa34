"""``make bench``'s batch-file section: a JSONL file of distinct lines (``tools.batch_lines``) through
``POST /v1/batches {"input_file": ...}``, and apart from it, labelled, the old one-line-repeated file.

Times the create (every line validated, its images checked and stored, the items stored and queued
in the dispatcher's lists), reads Redis ``used_memory`` before and after (bytes per queued item),
then cancels the batch and times until it ends ``canceled``. The items are ``XL`` ones, so none runs.
The image URLs are served on loopback: the stack needs ``KILN_IMAGE_FETCH_ALLOW_PRIVATE=true``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from tests.support import wait_until
from tests.support.stack import TOKEN_A
from tools.batch_lines import ImageURLServer, distinct_lines, identical_lines, png, urls_used

TARGET_ITEMS_PER_S = 20_000
TARGET_BYTES_PER_ITEM = 1024
STACK_SETTINGS = {"KILN_IMAGE_FETCH_ALLOW_PRIVATE": "true"}


@dataclass(frozen=True)
class FileRun:
    lines: int
    distinct: bool
    seconds: float
    bytes_per_item: float
    # Seconds from the cancel until the batch ended ``canceled`` (None: not canceled).
    cancel_s: float | None
    # Requests the image server answered (each distinct URL should be fetched once).
    fetches: int

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


def batch_file(base_url: str, redis_url: str, lines: int, distinct: bool = True, cancel: bool = True) -> FileRun:
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=600) as client,
        redis.Redis.from_url(redis_url) as r,
        ImageURLServer() as images,
    ):
        image = client.post("/v1/files", files={"content": ("ref.png", png(1), "image/png")})
        image.raise_for_status()
        url = image.json()["urls"]["get"]
        body = distinct_lines(lines, url, images.urls()) if distinct else identical_lines(lines, url)
        upload = client.post("/v1/files", files={"content": ("b.jsonl", b"\n".join(body), "application/jsonl")})
        upload.raise_for_status()
        before = r.info("memory")["used_memory"]
        started = time.monotonic()
        created = client.post("/v1/batches", json={"input_file": upload.json()["urls"]["get"]})
        elapsed = time.monotonic() - started
        created.raise_for_status()
        counts = created.json()["counts"]
        if counts["starting"] != lines:
            raise RuntimeError(f"expected {lines} queued items, the batch says {counts}")
        after = r.info("memory")["used_memory"]
        cancel_s = _cancel(client, created.json()["urls"]) if cancel else None
    return FileRun(lines, distinct, elapsed, (after - before) / lines, cancel_s, images.hits)


def _cancel(client: httpx.Client, urls: dict[str, Any]) -> float:
    """Seconds from the cancel until every item and the batch ended ``canceled``."""
    started = time.monotonic()
    client.post(urls["cancel"]).raise_for_status()
    wait_until(lambda: client.get(urls["get"]).json()["status"] == "canceled", 600, what="the batch to end canceled")
    return time.monotonic() - started


def file_rows(runs: list[FileRun]) -> list[tuple[str, str, str, str]]:
    """The section's table rows: the distinct-line file against the targets, the identical one labelled."""
    rows: list[tuple[str, str, str, str]] = []
    for run in runs:
        if not run.distinct:
            rows.append(
                (
                    f"identical-line file (one line x {run.lines:,}, validated once; not a target), items/s",
                    f"{run.rate:,.0f} ({run.seconds:.2f} s)",
                    "",
                    "",
                )
            )
            continue
        rows += [
            (
                f"batch file of distinct lines accepted/s ({run.lines:,} lines, {run.seconds:.2f} s)",
                f"{run.rate:,.0f}",
                f">= {TARGET_ITEMS_PER_S:,}",
                "met" if run.rate >= TARGET_ITEMS_PER_S else "MISSED",
            ),
            (
                "Redis bytes per queued distinct-line item",
                f"{run.bytes_per_item:,.0f}",
                f"<= {TARGET_BYTES_PER_ITEM:,}",
                "met" if run.bytes_per_item <= TARGET_BYTES_PER_ITEM else "MISSED",
            ),
            ("image URL fetches / distinct URLs in the file", f"{run.fetches:,} / {urls_used(run.lines):,}", "", ""),
        ]
        if run.cancel_s is not None:
            rows.append((f"batch cancel: {run.lines:,} items ended canceled, s", f"{run.cancel_s:.1f}", "", ""))
    return rows
