"""The fleet chaos run, short (``make chaos CHAOS_ARGS=--fleet`` at full length): Redis behind Sentinel
with two replicas, two APIs, two GPU workers and two webhook workers, through a primary killed twice,
an API process and a GPU worker killed, S3 stopped and the webhook receiver down, with a small batch file
beside the single creates. Nothing answered 201 is lost or completes twice, every prediction's completed
webhook arrives, and the batch's items all end and its one webhook arrives."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.support import fake_weights_dir
from tools.chaos_fleet import run_fleet

pytestmark = pytest.mark.integration


# The fleet's shape with two of each (the full run: three APIs, four GPU workers): this machine's two cores
# start and run it within the test's time.
@pytest.mark.timeout(600)
def test_a_short_fleet_run_loses_nothing(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    args = argparse.Namespace(
        count=40,
        batch_lines=20,
        submitters=4,
        s3_down_s=2.0,
        receiver_down_s=3.0,
        settle_timeout_s=240.0,
        size=(2, 2, 2),
        weights_dir=fake_weights_dir(tmp_path_factory),
    )
    line = run_fleet(args, tmp_path / "fleet", lambda message: None)
    with capsys.disabled():
        print(f"\nfleet: {line}")
    counts = dict(item.split("=", 1) for item in line.split())
    assert counts["faults"] == "6"
    assert (counts["lost"], counts["completed_twice"], counts["webhooks_missing"], counts["unexpected"]) == (
        "0",
        "0",
        "0",
        "0",
    )
    assert int(counts["accepted"]) + int(counts["refused"]) == 40 and counts["refused"] == "0"
    assert (counts["batch_items"], counts["batch_items_lost"], counts["batch_webhooks"]) == ("20", "0", "1")
