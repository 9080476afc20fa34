"""Runs of the XL predictor the row-scale and fast-mode tests share: Kiln's path against the plain
pipeline call scaled the diffusers way, and a count of the ControlNet's runs."""

from __future__ import annotations

from typing import Any

import numpy as np
from diffusers import ControlNetModel

from models.kit.rows import rows
from models.sdxl_family.ip_adapter_scales import ip_adapter_block_scales
from models.sdxl_family.predictor import IPAdapterXLPredictor
from tests.support.fakes import FakeContext
from tests.support.xl_inputs import inputs


def count_controlnet_forwards(monkeypatch) -> list[int]:
    """Every run of diffusers' ControlNet forward, as the batch size it ran at."""
    calls: list[int] = []
    forward = ControlNetModel.forward

    def counted(self, sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", counted)
    return calls


def kiln_pixels(predictor: IPAdapterXLPredictor, **fields: Any) -> list[np.ndarray]:
    return [np.asarray(image) for image in predictor.predict(inputs(**fields), FakeContext())]


def diffusers_pixels(predictor: IPAdapterXLPredictor, **fields: Any) -> list[np.ndarray]:
    """The same pipeline call with diffusers' float scales: ``set_ip_adapter_scale`` (InstantStyle dicts for
    modes; 1.0 with ip_images, whose weights ride in the masks) and ``controlnet_conditioning_scale``."""
    job = predictor.prepare(inputs(**fields), FakeContext())
    layout = rows([job], lambda job: job.inputs.num_outputs)
    given = job.inputs
    scale = 1.0 if given.ip_images is not None else given.ip_adapter_scale
    predictor.pipe.set_ip_adapter_scale(
        ip_adapter_block_scales(predictor.pipe.unet.config, given.ip_adapter_mode, scale)
    )
    images = predictor.run_pipeline(
        [job], layout, FakeContext().step_callback(), controlnet_conditioning_scale=given.controlnet_scale
    )
    return [np.asarray(image) for image in images]
