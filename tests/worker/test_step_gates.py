"""Step gates (tests only, KILN_STEP_GATES): a gated prediction waits after its first step until the
gate opens, and a cancel, time limit or hand-back still ends the wait."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.record import Prediction
from shared.settings import Settings
from worker.interrupts import HandedBack
from worker.step_gates import StepGate


def prediction(prompt: str) -> Prediction:
    return Prediction(tenant="t", model="kiln/sd2-depth2img", version="v", input={"prompt": prompt})


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_only_a_gated_prompt_with_gates_on_has_a_gate(redis):
    on, off = Settings(_env_file=None, step_gates=True), Settings(_env_file=None)
    assert StepGate.of(prediction("step-gate:g1 and more"), on, redis).name == "g1"
    assert StepGate.of(prediction("step-gate:g1"), off, redis) is None
    assert StepGate.of(prediction("a kiln at dusk"), on, redis) is None


def test_waits_while_closed_and_checks_interruptions_meanwhile(redis):
    redis.set(keys.step_gate("g2"), "closed")
    gate = StepGate(redis, "g2")
    checks = threading.Semaphore(0)
    waiter = threading.Thread(target=gate.wait, args=(checks.release,))
    waiter.start()
    assert checks.acquire(timeout=10) and checks.acquire(timeout=10), "interruptions checked while waiting"
    assert waiter.is_alive()
    redis.delete(keys.step_gate("g2"))
    waiter.join(10)
    assert not waiter.is_alive()


def test_an_interruption_ends_the_wait(redis):
    redis.set(keys.step_gate("g3"), "closed")

    def shutting_down() -> None:
        raise HandedBack()

    with pytest.raises(HandedBack):
        StepGate(redis, "g3").wait(shutting_down)


def test_an_open_gate_does_not_wait(redis):
    def never() -> None:
        raise AssertionError("an open gate waits for nothing")

    StepGate(redis, "never-closed").wait(never)
