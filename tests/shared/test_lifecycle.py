"""One state table and one lifecycle: every Lua script moves a status exactly where
``shared.predictions.status.ALLOWED_SOURCES`` allows, and every way a prediction ends (a worker's outcome, a
cancel from the API, the lease reaper) goes through ``PredictionLifecycle._ended`` once (fakeredis
with Lua, no servers)."""

from __future__ import annotations

import ast
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import fakeredis
import pytest
from prometheus_client import REGISTRY

from api.routes.predictions import cancel_prediction
from shared.db import keys, lua
from shared.predictions.client_json import render_prediction
from shared.predictions.leases import Leases
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.status import ALLOWED_SOURCES, TERMINAL, Status
from shared.predictions.store import PredictionStore
from shared.runtime.maintenance import reap_lapsed_leases
from shared.security.signed_urls import UrlSigner
from tests.support import REPO_ROOT
from tests.support.lifecycle import record_endings

PAIRS = list(itertools.product(Status, Status))
# Every Lua script that reads or changes a prediction's status (shared/db/lua/).
STATUS_SCRIPTS = ["store_transition", "store_update_running", "store_request_cancel", "leases_start", "leases_reap"]
STATUS_TABLE = lua.script("status_table")


@dataclass
class RecordingNotifier:
    events: list[tuple[str, str]] = field(default_factory=list)

    def notify(self, prediction: Prediction, event: str) -> None:
        self.events.append((prediction.id, event))


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis(), retention_s=60)


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Status]]:
    """Every call of the one function that follows a terminal transition, as (prediction id, status)."""
    return record_endings(monkeypatch)


def make(store: PredictionStore, status: Status = Status.STARTING, queue: str = "gpu.sd2-depth") -> Prediction:
    prediction = Prediction(
        tenant="t1",
        model="kiln/sd2-depth2img",
        version="v",
        queue=queue,
        input={"prompt": "x"},
        webhook="https://example.com/hook",
    )
    store.create(prediction)
    if status is not Status.STARTING:
        store.redis.hset(keys.prediction(prediction.id), "status", json.dumps(status.value))
    return prediction


def finished_count(status: Status) -> float:
    return (
        REGISTRY.get_sample_value(
            "kiln_predictions_finished_total", {"model": "kiln/sd2-depth2img", "status": status.value}
        )
        or 0.0
    )


def retention_due(store: PredictionStore, prediction_id: str) -> float | None:
    return store.redis.zscore(keys.retention(), f"prediction:{prediction_id}")


# --- the state table, in Lua --------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=lambda s: s.value)
def test_the_lua_allows_exactly_what_the_table_allows(current: Status, target: Status) -> None:
    allowed = fakeredis.FakeRedis().eval(
        STATUS_TABLE + "return may_enter(ARGV[1], ARGV[2]) and 1 or 0", 0, current.value, target.value
    )
    assert bool(allowed) == (current in ALLOWED_SOURCES[target])


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=lambda s: s.value)
def test_a_transition_moves_exactly_where_the_table_allows(
    store: PredictionStore, current: Status, target: Status
) -> None:
    prediction = make(store, current)
    assert store.transition(prediction.id, target) == (current in ALLOWED_SOURCES[target])
    assert store.status(prediction.id) is (target if current in ALLOWED_SOURCES[target] else current)


def test_the_scripts_follow_a_changed_table() -> None:
    """The Lua is rendered from the table, not written beside it: a move added to the table is allowed."""
    changed = ALLOWED_SOURCES | {Status.PROCESSING: frozenset({Status.STARTING, Status.FAILED})}
    check = "return may_enter(ARGV[1], ARGV[2]) and 1 or 0"
    redis = fakeredis.FakeRedis()
    assert redis.eval(STATUS_TABLE + check, 0, "failed", "processing") == 0
    assert redis.eval(lua.render("status_table", lua.placeholders(changed)) + check, 0, "failed", "processing") == 1


@pytest.mark.parametrize("name", STATUS_SCRIPTS)
def test_no_script_spells_out_a_status_of_its_own(name: str) -> None:
    """Status names and moves come from the rendered table; a script only names them by constant."""
    assert STATUS_TABLE in lua.script(name)
    body = lua.script(name).replace(STATUS_TABLE, "")
    for status in Status:
        assert f"'{status.value}'" not in body and f'"{status.value}"' not in body, (name, status)


@pytest.mark.parametrize("current", list(Status), ids=lambda s: s.value)
def test_start_and_cancel_follow_the_table(store: PredictionStore, current: Status) -> None:
    started = make(store, current)
    assert (Leases(store.redis, lease_s=30).start(started.id) is not None) == (
        current in ALLOWED_SOURCES[Status.PROCESSING]
    )
    canceled = make(store, current)
    assert store.request_cancel(canceled.id) is current
    may_cancel = current in ALLOWED_SOURCES[Status.CANCELED]
    now = Status.CANCELED if current is Status.STARTING and may_cancel else current
    assert store.status(canceled.id) is now
    assert store.cancel_requested(canceled.id) == (may_cancel and current is not Status.STARTING)


# --- one lifecycle ------------------------------------------------------------------------------


def test_a_workers_outcome_ends_the_prediction_once(store: PredictionStore, ended) -> None:
    notifier = RecordingNotifier()
    lifecycle = PredictionLifecycle(store, notifier)
    prediction = make(store)
    attempt = Leases(store.redis, lease_s=30).start(prediction.id)
    before = finished_count(Status.SUCCEEDED)
    assert lifecycle.finish(prediction, Status.SUCCEEDED, attempt=attempt, output=["out-0.png"], predict_time=1.5)
    # A duplicate (a redelivery, a late upload) changes nothing and sends nothing.
    assert not lifecycle.finish(prediction, Status.FAILED, attempt=attempt, error="late")
    assert ended == [(prediction.id, Status.SUCCEEDED)]
    record = store.get(prediction.id)
    assert (record.status, record.output, record.predict_time) == (Status.SUCCEEDED, ["out-0.png"], 1.5)
    assert record.completed_at is not None
    assert retention_due(store, prediction.id) == pytest.approx(time.time() + 60, abs=5)
    assert finished_count(Status.SUCCEEDED) == before + 1
    assert notifier.events == [(prediction.id, "completed")]


def test_a_stale_attempt_cannot_end_a_rerun(store: PredictionStore, ended) -> None:
    lifecycle = PredictionLifecycle(store, RecordingNotifier())
    prediction = make(store)
    Leases(store.redis, lease_s=30).start(prediction.id)
    assert not lifecycle.finish(prediction, Status.SUCCEEDED, attempt=2)
    assert ended == [] and store.status(prediction.id) is Status.PROCESSING


def test_a_batch_cancel_ends_each_queued_item_once_and_flags_the_running_one(store: PredictionStore, ended) -> None:
    notifier = RecordingNotifier()
    lifecycle = PredictionLifecycle(store, notifier)
    first, running, second, done = make(store), make(store), make(store), make(store)
    Leases(store.redis, lease_s=30).start(running.id)
    lifecycle.cancel_many([done])
    ended.clear()
    found = lifecycle.cancel_many([first, running, second, done])
    assert found == [Status.STARTING, Status.PROCESSING, Status.STARTING, Status.CANCELED]
    assert ended == [(first.id, Status.CANCELED), (second.id, Status.CANCELED)]
    assert notifier.events == [(done.id, "completed"), (first.id, "completed"), (second.id, "completed")]
    assert store.cancel_requested(running.id) and store.status(running.id) is Status.PROCESSING
    due = {member.decode() for member in store.redis.zrange(keys.retention(), 0, -1)}
    assert {f"{kind}:{p.id}" for p in (first, second, done) for kind in ("prediction", "record")} == due


def test_an_api_cancel_of_a_queued_prediction_ends_it_through_the_lifecycle(store: PredictionStore, ended) -> None:
    notifier = RecordingNotifier()
    services = SimpleNamespace(
        store=store,
        lifecycle=PredictionLifecycle(store, notifier),
        render=lambda prediction, base: render_prediction(prediction, base, UrlSigner("s", 3600), 3600),
    )
    queued, running = make(store), make(store)
    Leases(store.redis, lease_s=30).start(running.id)
    before = finished_count(Status.CANCELED)
    assert cancel_prediction(queued.id, "t1", services, "http://kiln.test")["status"] == "canceled"
    # A running one is only flagged: its worker ends it (finish) within a step.
    assert cancel_prediction(running.id, "t1", services, "http://kiln.test")["status"] == "processing"
    assert ended == [(queued.id, Status.CANCELED)]
    assert notifier.events == [(queued.id, "completed")]
    assert finished_count(Status.CANCELED) == before + 1
    assert retention_due(store, queued.id) is not None and retention_due(store, running.id) is None
    assert store.cancel_requested(running.id)


@dataclass
class RecordingCelery:
    sent: list[tuple[str, list, str]] = field(default_factory=list)

    def send_task(self, name: str, args: list, queue: str, priority: int | None = None) -> None:
        self.sent.append((name, args, queue))


def lapse(store: PredictionStore, prediction_id: str) -> None:
    store.redis.zadd(keys.running(), {prediction_id: time.time() - 1})


def test_the_reaper_requeues_then_fails_through_the_lifecycle(store: PredictionStore, ended) -> None:
    notifier, celery = RecordingNotifier(), RecordingCelery()
    lifecycle, leases = PredictionLifecycle(store, notifier), Leases(store.redis, lease_s=30)
    prediction = make(store)
    leases.start(prediction.id)
    lapse(store, prediction.id)
    assert reap_lapsed_leases(lifecycle, leases, celery, max_attempts=2) == 1
    assert store.status(prediction.id) is Status.STARTING and ended == []
    assert [args for _, args, _ in celery.sent] == [[prediction.id]]
    before = finished_count(Status.FAILED)
    leases.start(prediction.id)
    lapse(store, prediction.id)
    assert reap_lapsed_leases(lifecycle, leases, celery, max_attempts=2) == 1
    record = store.get(prediction.id)
    assert record.status is Status.FAILED and "worker died 2 times" in record.error
    assert ended == [(prediction.id, Status.FAILED)]
    assert notifier.events == [(prediction.id, "completed")]
    assert finished_count(Status.FAILED) == before + 1
    assert retention_due(store, prediction.id) is not None
    assert len(celery.sent) == 1


def test_the_reaper_requeues_on_the_queue_the_record_names(store: PredictionStore) -> None:
    """The record carries its queue, so the reaper (in every worker process, torch-free) needs no model lookup."""
    celery = RecordingCelery()
    lifecycle, leases = PredictionLifecycle(store, RecordingNotifier()), Leases(store.redis, lease_s=30)
    prediction = make(store, queue="gpu.elsewhere")
    leases.start(prediction.id)
    lapse(store, prediction.id)
    assert reap_lapsed_leases(lifecycle, leases, celery, max_attempts=2) == 1
    assert [(args, queue) for _, args, queue in celery.sent] == [([prediction.id], "gpu.elsewhere")]


# --- nothing else ends a prediction -------------------------------------------------------------

APPLICATION_PACKAGES = ("api", "shared", "worker", "webhook_worker")
LIFECYCLE = Path("shared/predictions/lifecycle.py")


def calls_in(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            found.append((name, node))
    return found


def ends_a_prediction(name: str, call: ast.Call) -> bool:
    """Calls that make or follow a terminal transition: only the lifecycle may make them."""
    constants = [arg.value for arg in call.args if isinstance(arg, ast.Constant)]
    named = {arg.attr for arg in ast.walk(call) if isinstance(arg, ast.Attribute)}
    return (
        name in {"record_finished", "schedule_retention", "request_cancel"}
        or (name == "notify" and "completed" in constants)
        or (name == "transition" and bool(named & {status.name for status in TERMINAL}))
    )


def test_only_the_lifecycle_ends_a_prediction() -> None:
    offenders = []
    for package in APPLICATION_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT)
            for name, call in calls_in(path):
                if ends_a_prediction(name, call) and relative != LIFECYCLE:
                    offenders.append(f"{relative}:{call.lineno} {name}")
    assert offenders == []
    # The check does see them where they are.
    assert {name for name, call in calls_in(REPO_ROOT / LIFECYCLE) if ends_a_prediction(name, call)} == {
        "record_finished",
        "schedule_retention",
        "request_cancel",
        "notify",
    }
