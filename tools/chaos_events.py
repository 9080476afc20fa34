"""The faults ``make chaos`` injects, each when submissions reach a fraction of the total: the GPU
worker SIGKILLed (and restarted) twice, Redis stopped and started once on the same port and AOF."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import redis

from shared.db import keys
from tests.support.stack import Stack

# How long Redis stays down, so that clients see it gone rather than a blip.
REDIS_DOWN_S = 2.0
# A kill waits up to this long for a prediction to be running, so that it lands mid-prediction.
RUNNING_WAIT_S = 15.0


class ChaosSchedule:
    """Runs the faults in a thread, in order, as ``progress()`` (0..1) passes each threshold."""

    def __init__(
        self, stack: Stack, progress: Callable[[], float], log: Callable[[str], None], inject: bool = True
    ) -> None:
        self.stack = stack
        self.progress = progress
        self.log = log
        self.faults = (
            [
                (0.2, "SIGKILL the GPU worker", self.kill_gpu_worker),
                (0.45, "restart Redis", self.restart_redis),
                (0.7, "SIGKILL the GPU worker", self.kill_gpu_worker),
            ]
            if inject
            else []
        )
        self.done: list[str] = []
        # Held while a fault runs, so the watchdog does not take a planned kill for a crash.
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, deadline: float) -> None:
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        for threshold, name, fault in self.faults:
            while self.progress() < threshold:
                time.sleep(0.2)
            started = time.monotonic()
            with self.lock:
                fault()
            self.done.append(name)
            self.log(f"{name}: done in {time.monotonic() - started:.1f} s")

    def kill_gpu_worker(self) -> None:
        self._wait_for_a_running_prediction()
        self.stack.kill_gpu_worker(signal.SIGKILL)
        self.stack.start_gpu_worker()

    def restart_redis(self) -> None:
        self.stack.redis.stop()
        time.sleep(REDIS_DOWN_S)
        self.stack.redis.start()

    def _wait_for_a_running_prediction(self) -> None:
        deadline = time.monotonic() + RUNNING_WAIT_S
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=2) as client:
            while time.monotonic() < deadline:
                try:
                    if client.zcard(keys.running()):
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.05)


class Watchdog:
    """Notices stack processes that exit on their own (not one of the planned kills); with
    ``restart`` it starts them again, as ``make run``'s supervisor would."""

    def __init__(
        self,
        stack: Stack,
        schedule: ChaosSchedule,
        restarters: dict[str, Callable[[], None]],
        restart: bool,
        log: Callable[[str], None],
    ) -> None:
        self.stack = stack
        self.schedule = schedule
        self.restarters = restarters
        self.restart = restart
        self.log = log
        self.crashes: list[str] = []
        self._watched = set(restarters)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stopping.wait(1.0):
            for name in sorted(self._watched):
                with self.schedule.lock:  # a planned kill is not a crash
                    process = self.stack.processes[name]
                    if process.poll() is None:
                        continue
                    self.crashes.append(name)
                    if self.restart:
                        self.log(f"{name} exited on its own (status {process.returncode}); restarting it")
                        self.restarters[name]()
                    else:
                        self.log(
                            f"{name} exited on its own (status {process.returncode}); not restarted (--supervise would)"
                        )
                        self._watched.discard(name)
