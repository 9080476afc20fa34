"""The models Kiln serves: light metadata both the API and the workers import.

Adding a model is one entry here, its input schema in ``shared/models/`` and its predictor in
``worker/predictors/``; the API needs no change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

from shared import queues
from shared.models.base import ModelInput
from shared.models.ip_adapter_xl import IPAdapterXLInput
from shared.models.sd2_depth2img import Depth2ImgInput
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

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

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


MODELS: dict[str, ModelSpec] = {
    spec.ref: spec
    for spec in (
        ModelSpec(
            owner="kiln",
            name="sd2-depth2img",
            description="Stable Diffusion 2 depth-to-image: transform an image while keeping its depth structure.",
            input_model=Depth2ImgInput,
            queue=queues.SD2_DEPTH,
            predictor="worker.predictors.sd2_depth2img:Depth2ImgPredictor",
            weights_settings=("sd2_depth2img_weights",),
        ),
        ModelSpec(
            owner="kiln",
            name="ip-adapter-depth-xl",
            description="SDXL with IP-Adapter and a depth ControlNet: an image prompt, laid out like the depth of "
            "a reference image.",
            input_model=IPAdapterXLInput,
            queue=queues.SDXL,
            predictor="worker.predictors.ip_adapter_depth_xl:IPAdapterDepthXLPredictor",
            weights_settings=("sdxl_base_weights", "sdxl_vae_fp16_weights", "controlnet_depth_xl_weights",
                              "ip_adapter_weights", "annotators_weights"),
        ),
        ModelSpec(
            owner="kiln",
            name="ip-adapter-openpose-xl",
            description="SDXL with IP-Adapter and an openpose ControlNet: an image prompt, posed like the person "
            "in a reference image.",
            input_model=IPAdapterXLInput,
            queue=queues.SDXL,
            predictor="worker.predictors.ip_adapter_openpose_xl:IPAdapterOpenposeXLPredictor",
            weights_settings=("sdxl_base_weights", "sdxl_vae_fp16_weights", "controlnet_openpose_xl_weights",
                              "ip_adapter_weights", "annotators_weights"),
        ),
    )
}


class UnknownModelError(LookupError):
    pass


def find_model(ref: str) -> ModelSpec:
    try:
        return MODELS[ref]
    except KeyError:
        raise UnknownModelError(f"model {ref!r} does not exist; known models: {sorted(MODELS)}") from None


def resolve_version(version: str, settings: Settings) -> ModelSpec:
    """Find the model for a ``version`` field: a version id, ``owner/name`` or ``owner/name:id``."""
    ref, _, version_id = version.partition(":") if "/" in version else ("", "", version)
    if ref:
        spec = find_model(ref)
        if version_id and version_id != spec.version_id(settings):
            raise UnknownModelError(f"version {version_id!r} of {ref} does not exist")
        return spec
    for spec in MODELS.values():
        if spec.version_id(settings) == version_id:
            return spec
    raise UnknownModelError(f"version {version_id!r} does not exist")
