"""The Kiln API over HTTP (httpx): the calls the client commands make, the API's problems as ``ApiError``.

The token goes only to the configured API's origin. Output and stream URLs are signed, so they
work without it wherever they point; a page's ``next`` URL is followed on the configured API (the
API may render its public URL, which a client inside the network does not use). A 429 (rate limit,
queue full) is waited out as its ``Retry-After`` says, a few times: a refused request stored nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from shared.client.config import ClientConfig
from shared.client.errors import ApiError, ClientError
from shared.client.sse import Event, parse_events

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# A batch is answered once every line is validated: a large file takes minutes.
BATCH_CREATE_TIMEOUT = httpx.Timeout(900.0, connect=10.0)
# A stream sends a comment every 15 s while nothing happens; this long without a byte means it is gone.
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# 429s waited out before the command gives up, each for at most MAX_RETRY_AFTER_S.
RETRIES_429 = 4
MAX_RETRY_AFTER_S = 60.0


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    parsed = httpx.URL(str(url))
    return parsed.scheme, parsed.host, parsed.port


class SameOriginBearer(httpx.Auth):
    """``Authorization: Bearer`` on requests to the configured API only."""

    def __init__(self, base_url: str, token: str) -> None:
        self.origin = origin(base_url)
        self.header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self.origin:
            request.headers["Authorization"] = self.header
        yield request


def problem_detail(response: httpx.Response) -> str:
    """What the API said is wrong: a problem's ``detail`` (or ``title``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)
    return response.text[:300].strip() or response.reason_phrase


def api_error(response: httpx.Response) -> ApiError:
    detail = problem_detail(response)
    if response.status_code == 401:
        detail += " (check --token, KILN_TOKEN or the config file's token)"
    return ApiError(response.status_code, response.request.method, response.request.url.path, detail)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429 asks to wait (at most MAX_RETRY_AFTER_S); None when it gives no number."""
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return None


def idempotency_key() -> dict[str, str]:
    """A fresh key per create: a create repeated after a 429 is never stored twice."""
    return {"Idempotency-Key": secrets.token_hex(16)}


def path_of(identifier: str) -> str:
    return quote(identifier, safe="")


class KilnClient:
    """The API calls of the client commands; every failure is a ``ClientError``."""

    def __init__(
        self,
        config: ClientConfig,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = config.url
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=config.url,
            auth=SameOriginBearer(config.url, config.token),
            timeout=TIMEOUT,
            transport=transport,
            headers={"User-Agent": "kiln-cli"},
        )

    def __enter__(self) -> KilnClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """The answer to a request, after waiting out a few 429s; ``ApiError`` for a 4xx/5xx."""
        for attempt in range(RETRIES_429 + 1):
            try:
                response = self.http.request(method, url, **options)
            except httpx.HTTPError as exc:
                raise ClientError(f"{method} {url}: no answer from the API at {self.base_url}: {exc}") from None
            wait = retry_after(response) if response.status_code == 429 else None
            if wait is None or attempt == RETRIES_429:
                break
            self.sleep(wait)
        if response.status_code >= 400:
            raise api_error(response)
        return response

    def json(self, method: str, url: str, **options: Any) -> Any:
        response = self.request(method, url, **options)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}") from None

    def object(self, method: str, url: str, **options: Any) -> dict[str, Any]:
        """An answer that is one JSON object (a prediction, a batch, a file)."""
        found = self.json(method, url, **options)
        if not isinstance(found, dict):
            raise ClientError(f"{method} {url}: the answer is not a JSON object: {str(found)[:200]!r}")
        return found

    @contextmanager
    def opened(self, url: str | httpx.URL, what: str, **options: Any) -> Iterator[httpx.Response]:
        """A GET whose body is read as it comes (a stream, a file); ``what`` names it in errors."""
        try:
            with self.http.stream("GET", url, **options) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response)
                yield response
        except httpx.HTTPError as exc:
            raise ClientError(f"{what}: {exc}") from None

    def on_this_api(self, url: str) -> str:
        """``url`` (a page's ``next``) on the configured API: its path and query there."""
        parts, prefix = urlsplit(url), urlsplit(self.base_url).path.rstrip("/")
        path = parts.path.removeprefix(prefix) if parts.path.startswith(f"{prefix}/") else parts.path
        return path + (f"?{parts.query}" if parts.query else "")

    def pages(self, url: str, params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every result of a paged list (``{"results": [...], "next": url}``), following ``next``."""
        next_url: str | None = url
        while next_url:
            page = self.object("GET", next_url, params=params)
            yield from page.get("results") or []
            found = page.get("next")
            next_url, params = (self.on_this_api(found) if found else None), None

    # Predictions and files.

    def create_prediction(self, version: str, inputs: dict[str, Any]) -> dict[str, Any]:
        body = {"version": version, "input": inputs}
        return self.object("POST", "/v1/predictions", json=body, headers=idempotency_key())

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        return self.object("GET", f"/v1/predictions/{path_of(prediction_id)}")

    def cancel_prediction(self, prediction_id: str) -> dict[str, Any]:
        return self.object("POST", f"/v1/predictions/{path_of(prediction_id)}/cancel")

    def delete_prediction(self, prediction_id: str) -> dict[str, Any]:
        """The prediction as deleted; a running one is a 409 (cancel it first)."""
        return self.object("DELETE", f"/v1/predictions/{path_of(prediction_id)}")

    def upload(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """A Files API upload (``POST /v1/files``); its ``urls.get`` is usable as an input."""
        return self.object("POST", "/v1/files", files={"content": (name, data, content_type)})

    def events(self, stream_url: str) -> Iterator[Event]:
        """A prediction's stream, with Kiln's ``status`` events, until the server closes it."""
        # Merged into the signed URL's own query (``params=`` would replace it).
        url = httpx.URL(stream_url).copy_merge_params({"kiln_status": "true"})
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        with self.opened(url, "the prediction's stream", headers=headers, timeout=STREAM_TIMEOUT) as response:
            yield from parse_events(response.iter_lines())

    def download(self, url: str, folder: Path, name: str) -> Path:
        """The file at ``url`` saved in ``folder`` as ``name``, or a numbered name beside it: never overwritten."""
        with self.opened(url, f"downloading {url.split('?')[0]}") as response:
            return save_new(folder, name, response.iter_bytes())

    # Batches.

    def create_batch(self, input_file: str) -> dict[str, Any]:
        body = {"input_file": input_file}
        return self.object("POST", "/v1/batches", json=body, headers=idempotency_key(), timeout=BATCH_CREATE_TIMEOUT)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.object("GET", f"/v1/batches/{path_of(batch_id)}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.object("POST", f"/v1/batches/{path_of(batch_id)}/cancel")

    def save_results(self, batch_id: str, path: Path) -> None:
        """The batch's results file (JSONL, one line per item in submission order) written to ``path``
        whole or not at all."""
        partial = path.with_name(f".{path.name}.partial")
        url = f"/v1/batches/{path_of(batch_id)}/results"
        try:
            with self.opened(url, f"batch {batch_id}'s results") as response, partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    # Webhook deliveries.

    def deliveries(self, state: str, since: str | None) -> Iterator[dict[str, Any]]:
        params = {"state": state} | ({"since": since} if since else {})
        return self.pages("/v1/webhooks/deliveries", params)

    def retry_delivery(self, webhook_id: str) -> Any:
        return self.json("POST", f"/v1/webhooks/deliveries/{path_of(webhook_id)}/retry")

    def retry_deliveries(self, state: str, since: str | None) -> Any:
        body = {"state": state} | ({"since": since} if since else {})
        return self.json("POST", "/v1/webhooks/deliveries/retry", json=body)


def save_new(folder: Path, name: str, chunks: Iterator[bytes]) -> Path:
    """``chunks`` written to a file in ``folder`` that did not exist: ``name``, else ``stem-1.ext``, ..."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for number in range(10_000):
        path = folder / (name if number == 0 else f"{stem}-{number}{suffix}")
        try:
            out = path.open("xb")
        except FileExistsError:
            continue
        try:
            with out:
                for chunk in chunks:
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
    raise ClientError(f"{folder}: no free file name for {name!r}")
