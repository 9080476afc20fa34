"""HTTP/1.1 requests written byte by byte, for what clients refuse to send: invalid UTF-8 in a
path, a query or a header."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(
    host: str, port: int, method: str, target: bytes, headers: dict[str, bytes] | None = None, body: bytes = b""
) -> RawResponse:
    """Send one request with ``target`` (path and query) and header values exactly as given."""
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        b"Host: " + f"{host}:{port}".encode(),
        b"Connection: close",
    ]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + value)
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, rest)
