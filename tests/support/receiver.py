"""A real HTTP webhook receiver on loopback that verifies every signature and records events."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from standardwebhooks.webhooks import Webhook

from shared.predictions.status import Status

# A prediction webhook with one of these statuses is its ``completed`` event.
TERMINAL_STATUSES = frozenset(status.value for status in Status if status.is_terminal())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict
    at: float

    @property
    def status(self) -> str:
        return self.body["status"]


class WebhookReceiver:
    """Answers each path with a scripted list of status codes (then 200), verifying signatures."""

    def __init__(self, secret: str | list[str], port: int = 0) -> None:
        # One secret per tenant whose webhooks it takes (each tenant signs with its own).
        self.verifiers = [Webhook(key) for key in ([secret] if isinstance(secret, str) else secret)]
        self.received: list[Received] = []
        self.bad_signatures = 0
        self._scripts: dict[str, list[int]] = defaultdict(list)
        # Until then (monotonic), every delivery is answered 503 and not recorded: the receiver is down.
        self._down_until = 0.0
        self._lock = threading.Lock()
        # Run on each verified delivery before it is answered, as a receiver acting on it would (fetching its outputs).
        self.on_delivery: Callable[[Received], None] | None = None
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def down_for(self, seconds: float) -> None:
        """Answer 503 to every delivery for ``seconds``, recording none of them."""
        self._down_until = time.monotonic() + seconds

    def script(self, path: str, statuses: list[int]) -> None:
        self._scripts[path] = list(statuses)

    def terminal_deliveries(self) -> tuple[dict[str, set[str]], int]:
        """Prediction id -> the distinct webhook-ids of its terminal (``completed``) deliveries, and how many
        deliveries repeated a message already received (the same webhook-id again)."""
        with self._lock:
            received = list(self.received)
        found: dict[str, set[str]] = {}
        repeated = 0
        for event in received:
            if event.body.get("status") in TERMINAL_STATUSES:
                ids = found.setdefault(event.body["id"], set())
                repeated += event.headers["webhook-id"] in ids
                ids.add(event.headers["webhook-id"])
        return found, repeated

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    @staticmethod
    def verified(verifier: Webhook, raw: str, headers: dict[str, str]) -> bool:
        try:
            verifier.verify(raw, headers)
        except Exception:
            return False
        return True

    def _handler(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                if time.monotonic() < receiver._down_until:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                if not any(receiver.verified(verifier, raw, headers) for verifier in receiver.verifiers):
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                delivery = Received(self.path, headers, json.loads(raw), time.monotonic())
                if receiver.on_delivery is not None:
                    receiver.on_delivery(delivery)
                with receiver._lock:
                    receiver.received.append(delivery)
                    script = receiver._scripts[self.path]
                    status = script.pop(0) if script else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler


class HoldingReceiver:
    """A receiver that reads each request and never answers: every attempt holds its connection (and a
    webhook thread) until the sender gives up. Counts the connections open now and at most, and keeps the
    paths requested."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.open = self.most_open = self.ended = 0
        self.paths: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            with conn:
                first = conn.recv(65536)
                with self._lock:
                    self.paths.add(first.split(b" ", 2)[1].decode() if first.count(b" ") >= 2 else "")
                while conn.recv(65536):  # until the sender closes it
                    pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self.ended += 1

    def __enter__(self) -> HoldingReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
