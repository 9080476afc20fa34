"""Keeps a running prediction's lease alive from a side thread while the predictor works."""

from __future__ import annotations

import logging
import threading

import redis

from shared.predictions.leases import Leases

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, leases: Leases, prediction_id: str) -> None:
        self.leases = leases
        self.prediction_id = prediction_id
        # Renew well before the lease lapses, so one slow renewal does not lose it.
        self.interval_s = leases.lease_s / 3
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{prediction_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.leases.renew(self.prediction_id):
                    # Also what a renewal racing the prediction's own finish sees: only a loss while
                    # it still runs matters, and the runner stops at its next step.
                    if not self._stop.is_set():
                        log.info(
                            "lease on %s is gone; the prediction finished or another worker took it", self.prediction_id
                        )
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # Redis restarting: keep trying; the reaper decides
                log.warning("could not renew the lease on %s: %s", self.prediction_id, exc)
