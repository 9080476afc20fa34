"""A spy on ``PredictionLifecycle._ended``, the one function that follows every terminal transition."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.status import Status


def record_endings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Status]]:
    """Every prediction the lifecycle ends from now on, as ``(prediction id, status)``, in order; the
    real ``_ended`` still runs (retention, metrics, webhook)."""
    endings: list[tuple[str, Status]] = []
    original = PredictionLifecycle._ended

    def spy(
        self: PredictionLifecycle, predictions: Sequence[Prediction], status: Status, predict_time: float | None = None
    ) -> None:
        endings.extend((prediction.id, status) for prediction in predictions)
        original(self, predictions, status, predict_time)

    monkeypatch.setattr(PredictionLifecycle, "_ended", spy)
    return endings
