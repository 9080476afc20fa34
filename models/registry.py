"""The models Kiln serves: one line per model, each naming the ``SPEC`` its folder declares.

Both the API and the workers import this; it imports no torch (a model folder's ``__init__`` and
``schema`` are light, its predictor and weights are imported by workers only). Adding a model is a
folder under ``models/`` and a line here (docs/architecture.md, "How to add a model").
"""

from __future__ import annotations

from models import instantid_xl, ip_adapter_depth_xl, ip_adapter_openpose_xl, sd2_depth2img
from shared.model_spec import ModelSpec
from shared.settings import Settings

MODELS: dict[str, ModelSpec] = {
    spec.ref: spec
    for spec in (
        sd2_depth2img.SPEC,
        ip_adapter_depth_xl.SPEC,
        ip_adapter_openpose_xl.SPEC,
        instantid_xl.SPEC,
    )
}


class UnknownModelError(LookupError):
    pass


def served_models(settings: Settings) -> dict[str, ModelSpec]:
    """The models this deployment serves: all but the non-commercial ones unless the operator allows them."""
    return {ref: spec for ref, spec in MODELS.items() if spec.served(settings)}


def find_model(ref: str, settings: Settings | None = None) -> ModelSpec:
    """The model ``ref``; with ``settings``, only if this deployment serves it (the error says why not)."""
    spec = MODELS.get(ref)
    if spec is None:
        known = sorted(MODELS) if settings is None else sorted(served_models(settings))
        raise UnknownModelError(f"model {ref!r} does not exist; known models: {known}")
    if settings is not None and not spec.served(settings):
        raise UnknownModelError(
            f"model {ref!r} is not served here: its weights are licensed for non-commercial research only, and "
            "the operator serves it only with KILN_ALLOW_NONCOMMERCIAL_MODELS=true"
        )
    return spec


def resolve_version(version: str, settings: Settings) -> ModelSpec:
    """Find the model for a ``version`` field: a version id, ``owner/name`` or ``owner/name:id``."""
    ref, _, version_id = version.partition(":") if "/" in version else ("", "", version)
    if ref:
        spec = find_model(ref, settings)
        if version_id and version_id != spec.version_id(settings):
            raise UnknownModelError(f"version {version_id!r} of {ref} does not exist")
        return spec
    for spec in served_models(settings).values():
        if spec.version_id(settings) == version_id:
            return spec
    raise UnknownModelError(f"version {version_id!r} does not exist")
