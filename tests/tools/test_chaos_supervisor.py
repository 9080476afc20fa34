"""The fleet chaos run's supervisor: a process that exits by itself is logged (status, log tail) and started
again after a delay, as Kubernetes or compose would; one a fault killed on purpose is left to the fault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import python, stop_processes, wait_until
from tests.support.stack import Stack
from tools import chaos_fleet
from tools.chaos_fleet import Attempt, Fleet, Load, Supervisor

CRASH = [python(), "-c", "print('kombu says no'); raise SystemExit(3)"]
SLEEP = [python(), "-c", "import time; time.sleep(600)"]


@pytest.fixture
def fleet(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    stack = Stack(
        base_url="",
        tls_base_url="",
        tls_ca=tmp_path / "unused",
        env=dict(os.environ),
        redis=None,  # type: ignore[arg-type]  # no server: only processes here
        s3=None,  # type: ignore[arg-type]
        logs=tmp_path / "logs",
    )
    yield Fleet(stack, None, [])  # type: ignore[arg-type]
    stop_processes(stack.processes.values())


def test_a_process_that_exits_by_itself_is_logged_and_restarted(fleet, monkeypatch) -> None:
    monkeypatch.setattr(chaos_fleet, "RESTART_DELAY_S", 0.0)
    logged: list[str] = []
    supervisor = Supervisor(fleet, logged.append)
    first = fleet.stack.start("webhooks-0", CRASH)
    first.wait(60)
    supervisor.check()
    assert "webhooks-0 exited by itself (status 3)" in logged[0] and "kombu says no" in logged[0]
    assert supervisor.restarts == []
    wait_until(lambda: (supervisor.check(), supervisor.restarts)[1] != [], 30, what="a restart")
    assert supervisor.restarts == ["webhooks-0"]
    assert fleet.stack.processes["webhooks-0"] is not first


def test_a_process_a_fault_killed_is_not_restarted_twice(fleet, monkeypatch) -> None:
    monkeypatch.setattr(chaos_fleet, "RESTART_DELAY_S", 0.0)
    logged: list[str] = []
    supervisor = Supervisor(fleet, logged.append)
    fleet.start("api-1", SLEEP)
    fleet.kill("api-1")
    supervisor.check()
    supervisor.check()
    assert (logged, supervisor.restarts) == ([], [])
    fleet.start("api-1", SLEEP)  # the fault starts it again
    supervisor.check()
    assert fleet.stack.processes["api-1"].poll() is None and supervisor.restarts == []


def test_the_longest_wait_is_one_submissions_from_its_first_try_to_its_201() -> None:
    # Others' 201s fill the gaps, so the longest window between 201s does not show one client held by 409s.
    load = Load(None, "http://receiver", count=2, waited_share=0.0)  # type: ignore[arg-type]
    load.attempts += [
        Attempt(1.0, 0, 503, "stored, but not yet confirmed", 7, 1.0, False),
        Attempt(11.0, 1, 409, "still being processed", 7, 10.0, False),
        Attempt(2.0, 0, 201, "", 8, 0.1, False),
        Attempt(12.0, 1, 201, "", 8, 0.1, False),
        Attempt(30.5, 2, 201, "", 7, 0.5, False),
    ]
    assert load.longest_wait() == (30.5, 7)
    assert "409 still being processed" in load.explain_wait(7)
