"""InstantID's keypoint ControlNet: it reads the face tokens where other ControlNets read the prompt.

InstantID trains its ControlNet ("IdentityNet") with the face adapter's 16 face tokens as its
cross-attention input instead of the text embeddings, so that where the face goes and whose it is
come together. ``StableDiffusionXLControlNetPipeline`` passes the ControlNet the prompt's embeddings;
this subclass of the family's row-scaled ControlNet swaps in the tokens set for the call
(``identity_applied``), row for row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from models.sdxl_family.row_scales import RowScaledControlNetModel, unwrapped


class IdentityControlNetModel(RowScaledControlNetModel):
    """The family's row-scaled ControlNet attending to ``identity_tokens`` (``(rows, 16, dim)``) when set."""

    identity_tokens: torch.Tensor | None = None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        if self.identity_tokens is not None:
            encoder_hidden_states = self.identity_tokens.to(dtype=sample.dtype)
        return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **kwargs)


@contextmanager
def identity_applied(controlnet: Any, tokens: torch.Tensor, masks: torch.Tensor | None) -> Iterator[None]:
    """For one pipeline call: the ControlNet reads ``tokens`` (rows as the UNet sees them) and its residuals
    apply only where ``masks`` (``(rows, 1, height, width)``, or None: everywhere) are 1."""
    net = unwrapped(controlnet)
    if not isinstance(net, IdentityControlNetModel):
        raise TypeError("the pipeline's ControlNet is not InstantID's")
    net.identity_tokens, net.row_masks = tokens, masks
    try:
        yield
    finally:
        net.identity_tokens, net.row_masks = None, None
