"""What stops a client command, and the exit status a script can rely on for each outcome."""

from __future__ import annotations

# Every prediction (or batch item) succeeded.
EXIT_OK = 0
# A prediction or batch item failed, was canceled or aborted, or was refused (invalid).
EXIT_FAILED = 1
# The command itself could not do its work: bad usage, an unreachable API, a refused token, a 4xx/5xx.
EXIT_ERROR = 2
# Stopped with Ctrl-C (what a shell reports for SIGINT); the prediction or batch goes on.
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """The command could not be done; the message says why (exit status 2)."""


class UsageError(ClientError):
    """The command line or the configuration is wrong."""


class ApiError(ClientError):
    """The API answered 4xx or 5xx: ``detail`` is its problem's explanation."""

    def __init__(self, status: int, method: str, path: str, detail: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
