"""A real stack per test session (``tests.support.stack``): before each test that uses it,
``repaired_stack`` restarts whatever an earlier test left down, so one failing test never takes the
tests after it with it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import pytest

from tests.support import fake_weights_dir
from tests.support.stack import TOKEN_A, TOKEN_B, Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), fake_weights_dir(tmp_path_factory)) as running:
        yield running


@pytest.fixture(autouse=True)
def repaired_stack(request: pytest.FixtureRequest) -> None:
    """Before each test that uses the stack: restart what an earlier test killed or stopped."""
    if "stack" not in request.fixturenames:
        return
    stack = request.getfixturevalue("stack")
    repaired = stack.repair()
    stack.mark_logs()
    if repaired:
        warnings.warn(
            f"an earlier test left the stack broken; repaired before this test: {', '.join(repaired)}", stacklevel=1
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failing stack test's report shows what each process of the stack logged during it."""
    report: pytest.TestReport = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        for name, text in stack.logs_since_mark().items():
            report.sections.append((f"stack log: {name} (during the test, last lines)", text))
    return report


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(TOKEN_A) as c:
        yield c


@pytest.fixture
def other_client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(TOKEN_B) as c:
        yield c
