"""What Kiln knows about a model it serves, light enough for the API: names, inputs, queue, weights.

Each model declares its ``ModelSpec`` in its folder (``models/<name>/__init__.py``) and the registry
(``models/registry.py``) lists them; the predictor is named, not imported, so only workers load it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache

from shared.inputs.schema import ModelInput
from shared.settings import Settings


@dataclass(frozen=True)
class ModelSpec:
    owner: str
    name: str
    description: str
    input_model: type[ModelInput]
    queue: str
    # "module:Class" of the predictor, imported only by workers.
    predictor: str
    # Settings attributes holding the full-profile weights references (HF ids or local paths).
    weights_settings: tuple[str, ...]
    # The licences of its full-profile weights, for users (appended to its description).
    licence: str = field(default="", kw_only=True)
    # Its weights are for non-commercial research only: served only with KILN_ALLOW_NONCOMMERCIAL_MODELS.
    noncommercial: bool = field(default=False, kw_only=True)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    def served(self, settings: Settings) -> bool:
        """Whether this deployment serves it: every model, but non-commercial ones only when allowed."""
        return settings.allow_noncommercial_models or not self.noncommercial

    @property
    def described(self) -> str:
        """Its description with its weights' licence, as users read it."""
        return f"{self.description} Weights: {self.licence}" if self.licence else self.description

    def weights_ref(self, settings: Settings) -> str:
        if settings.weights_profile != "full":
            return f"{settings.weights_profile}:{self.ref}"
        return ",".join(str(getattr(settings, name)) for name in self.weights_settings)

    def version_id(self, settings: Settings) -> str:
        """A stable id for (input schema, weights): it changes exactly when either does."""
        return _version_id(self.input_model, self.weights_ref(settings))


@lru_cache(maxsize=64)
def _version_id(input_model: type[ModelInput], weights_ref: str) -> str:
    # Cached: building the JSON schema costs more than the rest of a create request.
    payload = json.dumps({"schema": input_model.model_json_schema(), "weights": weights_ref}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
