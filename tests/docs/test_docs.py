"""The README stays a short entry point, and every relative link in it and docs/ leads somewhere."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from tests.support.docs import README, Link, anchors, links, markdown_files

README_MAX_LINES = 150


def relative_links() -> list[Link]:
    return [link for page in markdown_files() for link in links(page) if not urlsplit(link.target).scheme]


def test_the_readme_is_at_most_150_lines():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_the_pages_have_relative_links_to_check():
    pages = {link.page.name for link in relative_links()}
    assert {"README.md", "api.md", "models.md", "architecture.md"} <= pages


@pytest.mark.parametrize("link", relative_links(), ids=lambda link: f"{link.page.name}->{link.target}")
def test_a_relative_link_points_to_a_file_and_heading_that_exist(link: Link):
    parts = urlsplit(link.target)
    target = (link.page.parent / unquote(parts.path)).resolve() if parts.path else link.page
    assert target.exists(), f"{link.page.name} links to {link.target}: no such file"
    if parts.fragment:
        assert target.suffix == ".md", f"{link.page.name} links to an anchor in {target.name}, not a page"
        assert parts.fragment in anchors(target), f"{link.page.name} links to {link.target}: no such heading"
