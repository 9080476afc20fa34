"""The IP-Adapter's and the ControlNet's strengths as tensors with one entry per batch row.

diffusers keeps both as Python floats: the IP-Adapter scale on each attention processor
(``set_ip_adapter_scale``; the processor skips the image prompt where it is 0) and the ControlNet's
``conditioning_scale``, an argument of every call. A graph compiled with ``dynamic=False`` is
specialised on such floats (one graph per value), and one float per call keeps predictions with
different strengths out of each other's micro-batch. Here they are data, set for one pipeline call
by ``row_scales_applied``:

- ``RowScaledIPAdapterAttnProcessor``: diffusers' IP-Adapter processor with a tensor of image-prompt
  scales per row (the InstantStyle mode included: 0 for rows whose mode leaves the layer out);
- ``RowScaledControlNetModel``: diffusers' ControlNet whose residuals are multiplied by a scale per
  row, and which does not run at all on the steps its guidance window turns it off.

Unset, both behave exactly as diffusers' own classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.controlnets.controlnet import ControlNetOutput

from models.sdxl_family.ip_adapter_scales import LayerRole, layer_role


class RowScaledIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """diffusers' ``IPAdapterAttnProcessor2_0`` with its image-prompt scales given per batch row.

    ``row_scales`` holds, per IP-Adapter, a ``(rows, n)`` tensor: the scale of each of the n image
    prompts in each row. With ``ip_adapter_masks`` each image prompt is attended on its own and gets
    its column; without, the image prompts are attended together (as in diffusers) and the tensor has
    one column. A scale of 0 is multiplied in rather than skipped: the same pixels, and no branch on a
    value. ``role`` (this layer's part in the InstantStyle modes) says which row scales it is given.
    While ``row_scales`` is None it is diffusers' processor, with its float ``scale``.
    """

    role: LayerRole = LayerRole.OTHER
    row_scales: list[torch.Tensor] | None = None
    # Every IP-Adapter loaded into the UNet; ``to_k_ip`` / ``to_v_ip`` / ``num_tokens`` hold the selected one.
    all_to_k_ip: torch.nn.ModuleList
    all_to_v_ip: torch.nn.ModuleList
    all_num_tokens: list[int]

    @classmethod
    def replacing(cls, processor: IPAdapterAttnProcessor2_0, role: LayerRole) -> RowScaledIPAdapterAttnProcessor:
        """One that takes over ``processor``'s IP-Adapter projections (shared, not copied), every adapter's,
        with the first selected (``select_adapter``)."""
        with torch.device("meta"):
            replacement = cls(
                processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, list(processor.scale)
            )
        replacement.all_to_k_ip, replacement.all_to_v_ip = processor.to_k_ip, processor.to_v_ip
        replacement.all_num_tokens = list(processor.num_tokens)
        replacement.role = role
        replacement.select_adapter(0)
        return replacement

    def select_adapter(self, index: int) -> None:
        """Attend to the ``index``-th loaded IP-Adapter only: to diffusers' code this processor then holds one."""
        self.to_k_ip = torch.nn.ModuleList([self.all_to_k_ip[index]])
        self.to_v_ip = torch.nn.ModuleList([self.all_to_v_ip[index]])
        self.num_tokens = [self.all_num_tokens[index]]
        self.scale = [1.0]

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        if self.row_scales is None or not isinstance(encoder_hidden_states, tuple):
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        # The steps of diffusers' processor, in its order (so float for float the same results), but
        # with the image prompts' contributions scaled by tensors.
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        query = split_heads(query)
        hidden_states = _attention(query, split_heads(key), split_heads(value), attention_mask)

        masks = ip_adapter_masks if ip_adapter_masks is not None else [None] * len(self.row_scales)
        for states, row_scale, to_k_ip, to_v_ip, mask in zip(
            ip_hidden_states, self.row_scales, self.to_k_ip, self.to_v_ip, masks, strict=True
        ):
            if mask is None:
                if row_scale.shape[1] != 1:
                    raise ValueError("image prompts attended together (no masks) take one scale column")
                attended = _attention(query, split_heads(to_k_ip(states)), split_heads(to_v_ip(states)))
                hidden_states = hidden_states + row_scale[:, :, None] * attended
                continue
            for i in range(mask.shape[1]):
                image = states[:, i, :, :]
                attended = _attention(query, split_heads(to_k_ip(image)), split_heads(to_v_ip(image)))
                downsampled = IPAdapterMaskProcessor.downsample(
                    mask[:, i, :, :], batch_size, attended.shape[1], attended.shape[2]
                ).to(dtype=query.dtype, device=query.device)
                hidden_states = hidden_states + row_scale[:, i, None, None] * (attended * downsampled)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of ``(batch, heads, tokens, head_dim)`` tensors, merged to ``(batch, tokens, heads * head_dim)``."""
    batch_size, heads, _, head_dim = query.shape
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)


class RowScaledControlNetModel(ControlNetModel):
    """diffusers' ``ControlNetModel`` whose residuals are scaled per batch row, outside its layers.

    With ``row_scales`` (``(rows,)``) set, it computes the residuals at ``conditioning_scale`` (the
    pipeline passes ``controlnet_conditioning_scale`` times the step's guidance-window keep; Kiln's
    calls pass 1.0, so the compiled layers see one constant) and multiplies each row's by its scale.
    Where ``conditioning_scale`` is 0 (a step outside ``control_guidance_start/end``) it does not run
    at all and returns no residuals: the UNet then adds none, which is what adding zeros gives. While
    ``row_scales`` is None it is diffusers' ControlNet. With ``conditional_only`` (the fast mode) it
    runs on the conditional half of a guided batch and gives the unconditional half zero residuals.
    """

    row_scales: torch.Tensor | None = None
    # ``(rows, 1, height, width)``: where each row's residuals apply (1) and not (0), resized to each residual
    # (InstantID's enhance_face_region). None: everywhere.
    row_masks: torch.Tensor | None = None
    # Rows are [unconditional, conditional] (classifier-free guidance): run on the conditional half only.
    conditional_only: bool = False

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        if self.row_scales is None:
            return super().forward(
                sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **kwargs
            )
        if kwargs.get("guess_mode"):
            raise ValueError("row scales do not apply to guess mode, which scales each residual on its own")
        return_dict = kwargs.pop("return_dict", True)
        if conditioning_scale == 0:
            return ControlNetOutput(None, None) if return_dict else (None, None)
        if self.conditional_only:
            down, mid = self._conditional_half(
                sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **kwargs
            )
        else:
            down, mid = super().forward(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale,
                return_dict=False,
                **kwargs,
            )
        down = [self._scaled(residual) for residual in down]
        mid = self._scaled(mid)
        return ControlNetOutput(down, mid) if return_dict else (down, mid)

    def _scaled(self, residual: torch.Tensor) -> torch.Tensor:
        """A residual times its row's scale, and its row's mask (resized to it) where one is set."""
        assert self.row_scales is not None
        scaled = residual * self.row_scales[:, None, None, None]
        if self.row_masks is None:
            return scaled
        return scaled * F.interpolate(self.row_masks.to(residual.dtype), size=residual.shape[-2:])

    def _conditional_half(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float,
        **kwargs: Any,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals of the rows ``[unconditional, conditional]``: computed for the conditional half
        only, zeros for the unconditional half (what diffusers' guess mode does, without its ramp)."""
        rows = sample.shape[0]
        half = rows // 2

        def conditional(value: Any) -> Any:
            batched = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows
            return value[half:] if batched else value

        added = kwargs.pop("added_cond_kwargs", None)
        if added is not None:
            kwargs["added_cond_kwargs"] = {key: conditional(value) for key, value in added.items()}
        down, mid = super().forward(
            sample[half:],
            conditional(timestep),
            encoder_hidden_states[half:],
            controlnet_cond[half:],
            conditioning_scale,
            return_dict=False,
            **kwargs,
        )
        return [torch.cat([torch.zeros_like(residual), residual]) for residual in down], torch.cat(
            [torch.zeros_like(mid), mid]
        )


def install_row_scaled_processors(unet: Any) -> None:
    """Replace the UNet's IP-Adapter processors (loaded by ``load_ip_adapter``, one or several adapters) with
    row-scaled ones, and keep every adapter's image projection: the first adapter is selected
    (``adapter_selected`` selects another for a call)."""
    processors = {
        name: RowScaledIPAdapterAttnProcessor.replacing(processor, layer_role(unet.config, name))
        if isinstance(processor, IPAdapterAttnProcessor2_0)
        else processor
        for name, processor in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
    projection = unet.encoder_hid_proj
    projection.all_layers = torch.nn.ModuleList(list(projection.image_projection_layers))
    _select(unet, 0)


def _select(unet: Any, index: int) -> None:
    for processor in unet.attn_processors.values():
        if isinstance(processor, RowScaledIPAdapterAttnProcessor):
            processor.select_adapter(index)
    projection = unet.encoder_hid_proj
    projection.image_projection_layers = torch.nn.ModuleList([projection.all_layers[index]])


def adapter_projection(unet: Any, index: int) -> torch.nn.Module:
    """The image projection of the ``index``-th loaded IP-Adapter (selected or not)."""
    return unwrapped(unet).encoder_hid_proj.all_layers[index]


@contextmanager
def adapter_selected(unet: Any, index: int) -> Iterator[None]:
    """For one pipeline call: the UNet attends to the ``index``-th loaded IP-Adapter only (its projections and
    image projection), as if it were the only one; the first again afterwards. Every adapter stays in memory,
    so models that share the UNet but not their adapter (the Plus variants, InstantID's) switch per call."""
    net = unwrapped(unet)
    _select(net, index)
    try:
        yield
    finally:
        _select(net, 0)


def unwrapped(module: Any) -> Any:
    """The module itself, if ``torch.compile`` wrapped it."""
    return getattr(module, "_orig_mod", module)


@contextmanager
def row_scales_applied(pipe: Any, ip: Mapping[LayerRole, torch.Tensor], controlnet: torch.Tensor) -> Iterator[None]:
    """For one pipeline call: each IP-Adapter processor's row scales (``ip[role]``, ``(rows, n)``) and
    the ControlNet's (``(rows,)``); rows as the UNet sees them ([unconditional, conditional] with guidance).

    Call the pipeline with ``controlnet_conditioning_scale=1.0``: the scales are here.
    """
    processors = [
        processor
        for processor in unwrapped(pipe.unet).attn_processors.values()
        if isinstance(processor, RowScaledIPAdapterAttnProcessor)
    ]
    net = unwrapped(pipe.controlnet)
    if not processors or not isinstance(net, RowScaledControlNetModel):
        raise TypeError("the pipeline has no row-scaled IP-Adapter processors or ControlNet")
    try:
        for processor in processors:
            processor.row_scales = [ip[processor.role]]
        net.row_scales = controlnet
        yield
    finally:
        for processor in processors:
            processor.row_scales = None
        net.row_scales = None
