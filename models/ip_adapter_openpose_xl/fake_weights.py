"""The openpose kind's own fake weights: checkpoints for its detector, controlnet-aux ``OpenposeDetector``.

Its ControlNet is built by the family's layout builders from ``CONTROL`` (``__init__.py``): the published
config in ``configs/`` (random-full) or the family's tiny blocks (tiny).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.sdxl_family.fake_weights.annotators import SEED, compact_random_state_dict

BODY_FILENAME = "body_pose_model.pth"
HAND_FILENAME = "hand_pose_model.pth"
FACE_FILENAME = "facenet.pth"


def _openpose_models() -> dict[str, nn.Module]:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    return {BODY_FILENAME: bodypose_model(), HAND_FILENAME: handpose_model(), FACE_FILENAME: FaceNet()}


def _strip_top_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # controlnet-aux's openpose loader (util.transfer) expects keys without the model's first level.
    return {name.split(".", 1)[1]: tensor for name, tensor in state.items()}


def write_random_checkpoints(folder: Path) -> None:
    """Write the openpose body, hand and face checkpoints with compact random weights into ``folder``."""
    with torch.device("meta"):
        openpose = _openpose_models()
    for index, (filename, model) in enumerate(openpose.items(), start=1):
        state = compact_random_state_dict(model, SEED + index)
        torch.save(state if filename == FACE_FILENAME else _strip_top_level(state), folder / filename)
