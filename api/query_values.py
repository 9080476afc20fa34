"""A query parameter sent more than once is a 400 naming it. Every parameter Kiln reads takes one value,
and FastAPI reads the last of a repeat silently: ``?state=delivered&state=failed`` listed the failed
messages, ``?source=bogus&source=api`` hid the bad value, ``?source=web&source=api`` answered for one of
the two. As ``api.deps.single_header`` does for headers, which value was meant is not guessed."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import problem_response

# A repeated name is shown up to this many characters.
MAX_NAME_SHOWN = 100


class SingleQueryValues:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only a query of two parameters or more can repeat one (creates have none: one check, no parse).
        if scope["type"] == "http" and b"&" in scope["query_string"]:
            name = repeated_name(scope["query_string"])
            if name is not None:
                detail = f"{name[:MAX_NAME_SHOWN]}: query parameter sent more than once; send it once"
                await problem_response(400, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def repeated_name(query_string: bytes) -> str | None:
    """The first parameter name that ``query_string`` holds twice, read as Starlette reads it; else None."""
    seen: set[str] = set()
    for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return name
        seen.add(name)
    return None
