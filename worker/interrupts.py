"""Why a running prediction stops before its predictor returns. The step callback raises these."""

from __future__ import annotations

from models.kit.contract import PredictionCanceled


class TimeLimitExceeded(Exception):
    def __init__(self, limit_s: float) -> None:
        super().__init__(f"prediction exceeded its time limit of {limit_s:g} s")


class LeaseLost(Exception):
    """Another worker took over (the lease lapsed and the reaper requeued it): stop, record nothing."""


class HandedBack(Exception):
    """The worker is shutting down and its grace period ran out: the prediction goes back to the queue."""


__all__ = ["HandedBack", "LeaseLost", "PredictionCanceled", "TimeLimitExceeded"]
