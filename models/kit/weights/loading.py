"""Load a diffusers pipeline for either weights profile through the one ``from_pretrained`` path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import DiffusionPipeline, ModelMixin

from models.kit.devices import dtype_for, resolve_device
from shared.settings import Settings

PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)
ModelT = TypeVar("ModelT", bound=ModelMixin)


def weights_source(
    settings: Settings,
    full_ref: str,
    ensure_tiny: Callable[[Path], Path],
    ensure_random_full: Callable[[Path, torch.device], Path],
) -> str:
    """What to pass to ``from_pretrained``: the local tiny or random-full folder (built on first use, the
    random-full one on the configured device) or the full profile's reference."""
    if settings.weights_profile == "tiny":
        return str(ensure_tiny(settings.resolved_weights_dir))
    if settings.weights_profile == "random-full":
        return str(ensure_random_full(settings.resolved_weights_dir, resolve_device(settings.device)))
    return full_ref


def hub_cache_dir(settings: Settings) -> Path:
    """Where Hub downloads are cached: under the weights directory, so a mounted volume keeps them."""
    return settings.resolved_weights_dir / "hub"


def load_pipeline(pipeline_cls: type[PipelineT], source: str, settings: Settings, **components: Any) -> PipelineT:
    """Load ``source`` (a local folder or a Hugging Face id) onto the configured device, ready to serve.

    Half precision on CUDA (``cuda_dtype``), fp32 elsewhere. ``components`` replace the pipeline's own
    (e.g. another VAE).
    Hub downloads are cached under the weights directory. The pipeline's own tqdm bar is disabled:
    progress reaches the prediction's logs through the step callback instead.
    """
    device = resolve_device(settings.device)
    pipe = pipeline_cls.from_pretrained(
        source, torch_dtype=dtype_for(device, settings.cuda_dtype), cache_dir=hub_cache_dir(settings), **components
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(model_cls: type[ModelT], source: str, settings: Settings, subfolder: str | None = None) -> ModelT:
    """Load one diffusers model (a ControlNet, a VAE) like ``load_pipeline`` loads a pipeline, from ``source``
    or its ``subfolder``."""
    device = resolve_device(settings.device)
    model = model_cls.from_pretrained(
        source,
        subfolder=subfolder,
        torch_dtype=dtype_for(device, settings.cuda_dtype),
        cache_dir=hub_cache_dir(settings),
    )
    return model.to(device)
