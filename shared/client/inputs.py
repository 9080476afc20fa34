"""What ``kiln run`` and ``kiln webhooks`` take on the command line: a model, ``-i key=value``, a time."""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.client.errors import UsageError

# owner/name or owner/name:version, as POST /v1/predictions takes ``version``.
MODEL = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[\w.-]+)?")
# A duration back from now for --since: 90m, 2h, 1h30m, 7d.
DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")

# Uploads a local file (its name, bytes, content type) and returns the URL to pass as the input.
Uploader = Callable[[str, bytes, str], str]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def check_model(text: str) -> str:
    if not MODEL.fullmatch(text):
        raise UsageError(f"MODEL: {text!r} is not owner/name or owner/name:version (e.g. kiln/sd2-depth2img)")
    return text


def parse_value(text: str) -> Any:
    """JSON when it parses (``4``, ``true``, ``[1, 2]``, ``"7"``), else the text as it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_inputs(pairs: Sequence[str], upload: Uploader) -> dict[str, Any]:
    """``key=value`` pairs as the prediction's input; a value ``@path`` uploads that file and passes its URL."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-i {pair!r}: give key=value (key=@path uploads a file)")
        if key in inputs:
            raise UsageError(f"-i {key}: given twice")
        inputs[key] = upload_file(key, value[1:], upload) if value.startswith("@") else parse_value(value)
    return inputs


def upload_file(key: str, name: str, upload: Uploader) -> str:
    path = Path(name).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"-i {key}=@{name}: cannot read the file: {exc.strerror or exc}") from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return upload(path.name, data, content_type)


def parse_since(text: str, now: datetime | None = None) -> str:
    """``--since``: an ISO 8601 time (no offset: UTC) or a duration back from now (``90m``, ``2h``,
    ``7d``), as the UTC ISO 8601 time the API takes."""
    found = DURATION.fullmatch(text.strip())
    try:
        if text.strip() and found and any(found.groups()):
            days, hours, minutes, seconds = (int(group or 0) for group in found.groups())
            back = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            moment = (now or datetime.now(UTC)) - back
        else:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):
        raise UsageError(
            f"--since: {text!r} is neither an ISO 8601 time (years 1-9999) nor a duration like 90m, 2h or 7d"
        ) from None
