"""How an SDXL + IP-Adapter + ControlNet model declares itself: its ControlNet kind and its spec.

Light (no torch): the registry, and so the API, imports it. The kind is declared once, in the model's
folder, and everything else reads it from there: the registry (its weights setting is part of the
version id), the weights builders (its ControlNet in the tiny and random-full layouts, its detector's
random checkpoints) and the predictor (which ControlNet and detector to load).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.sdxl_family.schema import IPAdapterXLInput
from shared.model_spec import ModelSpec
from shared.scheduling import queues

# The full profile's weights other than the ControlNet, in version-id order around it.
BASE_WEIGHTS_SETTINGS = ("sdxl_base_weights", "sdxl_vae_fp16_weights")
ADAPTER_WEIGHTS_SETTINGS = ("ip_adapter_weights", "annotators_weights")


@dataclass(frozen=True)
class ControlKind:
    """A ControlNet of the family and the controlnet-aux detector that turns ``input_image`` into its map.

    Its tiny ControlNet is the family's tiny UNet blocks with the conditioning channels of
    ``published_config`` (``models.sdxl_family.fake_weights.layout_configs.tiny_controlnet``).
    """

    # "depth": names its folder in the weights layouts (``controlnet-depth``) and its log lines.
    name: str
    # The ``Settings`` attribute holding its ControlNet for the full profile (a Hub id or a folder).
    weights_setting: str
    # Its ControlNet's published ``config.json``, built with random weights by the random-full profile.
    published_config: Path
    # "module:Class" of the detector; loaded with ``from_pretrained`` from the annotators weights.
    detector: str
    # "module:function" writing the detector's checkpoints with random weights into a folder (tiny and
    # random-full profiles; the model folder's ``fake_weights``, run by ``models.sdxl_family.fake_weights.annotators``).
    random_detector_checkpoints: str

    @property
    def folder(self) -> str:
        """Its ControlNet's folder in the tiny and random-full layouts."""
        return controlnet_folder(self.name)

    def detector_class(self) -> Any:
        return _import(self.detector)

    def write_random_detector_checkpoints(self, folder: Path) -> None:
        _import(self.random_detector_checkpoints)(folder)


@dataclass(frozen=True)
class ExtraAdapter:
    """An IP-Adapter that a model of the family adds to the shared UNet beside the family's own variants
    (InstantID's): every XL predictor of a process loads the same list, so they keep sharing one UNet."""

    name: str
    # "module:function" taking ``Settings`` and returning the adapter's weights as a local safetensors file
    # (``image_proj.*`` and ``ip_adapter.*`` tensors): converted, downloaded or built on first use.
    weights_file: str

    def file(self, settings: Any) -> str:
        return str(_import(self.weights_file)(settings))


@dataclass(frozen=True)
class AdapterModelSpec(ModelSpec):
    """A model on the family's shared SDXL that brings an IP-Adapter of its own (``layout.extra_adapters``)."""

    extra_adapter: ExtraAdapter


def controlnet_folder(kind_name: str) -> str:
    """The folder of a kind's ControlNet in the tiny and random-full layouts: ``controlnet-depth``."""
    return f"controlnet-{kind_name}"


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class XLModelSpec(ModelSpec):
    """A model of the family: its spec and its ControlNet kind."""

    control: ControlKind


# The licences of the weights every XL model loads (the full profile's).
BASE_LICENCE = (
    "SDXL 1.0 base and its fp16 VAE (CreativeML Open RAIL++-M), h94/IP-Adapter's SDXL adapters and image "
    "encoders (Apache-2.0)"
)


def xl_model_spec(
    *, owner: str, name: str, description: str, control: ControlKind, predictor: str, control_licence: str
) -> XLModelSpec:
    """The spec of an XL model: the family's inputs and queue, the shared weights around its ControlNet."""
    return XLModelSpec(
        owner=owner,
        name=name,
        description=description,
        input_model=IPAdapterXLInput,
        queue=queues.SDXL,
        predictor=predictor,
        weights_settings=(*BASE_WEIGHTS_SETTINGS, control.weights_setting, *ADAPTER_WEIGHTS_SETTINGS),
        control=control,
        licence=f"{BASE_LICENCE}; {control_licence}; lllyasviel/Annotators detectors (Apache-2.0).",
    )
