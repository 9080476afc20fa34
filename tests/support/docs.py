"""The README and the pages under docs/: their code blocks, headings and links, parsed with markdown-it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.support import REPO_ROOT

README = REPO_ROOT / "README.md"


def markdown_files() -> list[Path]:
    """The README and every page under docs/."""
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


@cache
def tokens(path: Path) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text())


def headings(path: Path) -> list[tuple[int, str]]:
    """Each heading of a page: the index of its first token and the text it shows."""
    page = tokens(path)
    return [
        (index, heading_text(inline))
        for index, (token, inline) in enumerate(pairwise(page))
        if token.type == "heading_open"
    ]


def block(path: Path, heading: str, language: str, index: int = 0) -> str:
    """The ``index``-th fenced ``language`` code block after the heading whose text is ``heading``."""
    start = next((at for at, text in headings(path) if text == heading), None)
    assert start is not None, f"{path.name} has no heading {heading!r}"
    fences = [
        token.content for token in tokens(path)[start:] if token.type == "fence" and token.info.strip() == language
    ]
    return fences[index]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_text(inline: Token) -> str:
    """What a heading shows: its text and code spans without the markup."""
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's ``-1``, ``-2``... for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for _, text in headings(path):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


@dataclass(frozen=True)
class Link:
    page: Path
    target: str


def links(path: Path) -> list[Link]:
    """Every link and image target of a page (code blocks and code spans hold none)."""
    found = []
    for token in tokens(path):
        for child in token.children or []:
            target = child.attrs.get("href") if child.type == "link_open" else child.attrs.get("src")
            if child.type in ("link_open", "image") and isinstance(target, str):
                found.append(Link(path, target))
    return found
