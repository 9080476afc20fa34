"""The predictors a worker keeps resident: loaded once, at start, for the queues it consumes."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable

from models.kit.contract import Predictor
from models.registry import MODELS
from shared.model_spec import ModelSpec
from shared.settings import Settings

log = logging.getLogger(__name__)


def import_predictor(path: str) -> type[Predictor]:
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class PredictorPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: dict[str, Predictor] = {}

    def load_for_queues(self, queue_names: Iterable[str]) -> None:
        """Set up every model served on these queues."""
        wanted = set(queue_names)
        for spec in MODELS.values():
            if spec.queue in wanted and spec.served(self.settings):
                self.get(spec)

    @property
    def models(self) -> list[str]:
        """The models set up so far."""
        return list(self._loaded)

    def get(self, spec: ModelSpec) -> Predictor:
        if not spec.served(self.settings):
            raise LookupError(f"{spec.ref} is not served: it needs KILN_ALLOW_NONCOMMERCIAL_MODELS=true")
        if spec.ref not in self._loaded:
            started = time.monotonic()
            predictor = import_predictor(spec.predictor)(self.settings)
            predictor.setup()
            self._loaded[spec.ref] = predictor
            log.info(
                "loaded %s (%s profile) in %.1f s", spec.ref, self.settings.weights_profile, time.monotonic() - started
            )
        return self._loaded[spec.ref]
