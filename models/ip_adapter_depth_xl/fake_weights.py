"""The depth kind's own fake weights: checkpoints for its detector, controlnet-aux ``MidasDetector``.

Its ControlNet is built by the family's layout builders from ``CONTROL`` (``__init__.py``): the published
config in ``configs/`` (random-full) or the family's tiny blocks (tiny).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.sdxl_family.fake_weights.annotators import SEED, compact_random_state_dict

# What MidasDetector.from_pretrained loads for model_type="dpt_hybrid".
MIDAS_FILENAME = "dpt_hybrid-midas-501f0c75.pt"


def _midas_model() -> nn.Module:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    # The architecture MidasDetector builds for model_type="dpt_hybrid".
    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def write_random_checkpoints(folder: Path) -> None:
    """Write the MiDaS DPT-hybrid checkpoint with compact random weights into ``folder``."""
    with torch.device("meta"):
        midas = _midas_model()
    torch.save(compact_random_state_dict(midas, SEED), folder / MIDAS_FILENAME)
