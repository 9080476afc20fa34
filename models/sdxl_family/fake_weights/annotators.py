"""Random-weight checkpoints for the controlnet-aux detectors of the family, stored compactly.

The tiny (and random-full) profile runs the same detectors as the full profile, e.g.
``MidasDetector.from_pretrained(folder)`` (DPT-hybrid, as ``lllyasviel/Annotators`` ships it) and
``OpenposeDetector.from_pretrained(folder)``, loaded through their real loaders. Those loaders build
fixed, full-size networks (MiDaS 123 M parameters; openpose body, hand and face 127 M) and
``torch.load`` a state dict into them, so there is no smaller architecture to choose; saved plainly,
random weights would take about 500 MB in fp16.

Here every weight tensor is instead a view into one random buffer shared by all tensors with the same
initialisation scale (``torch.save`` keeps shared storage), and every norm weight, bias and running
statistic is a single broadcast value, so the files take about 60 MB and build in a second, yet
load into the real architectures. Tensors start at different offsets of their buffer so that layers
differ. The weights are random: the depth map is an image-dependent texture, not depth, and openpose
finds no person, so its pose map is black.

One folder holds every kind's checkpoints, like ``lllyasviel/Annotators`` (the full profile's
``annotators_weights``); each kind names the function that writes its own
(``ControlKind.random_detector_checkpoints``).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.kit.fake_weights.building import builder_fingerprint, ensure_built
from models.sdxl_family.spec import ControlKind

SEED = 0
# Room for per-tensor start offsets inside a shared buffer.
OFFSET_SLACK = 4096
# timm's default for position embeddings and class tokens, which have no fan-in.
EMBEDDING_STD = 0.02
STORED_DTYPE = torch.float16

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LAYERS_WITH_FAN_IN = (nn.Linear, nn.modules.conv._ConvNd)


def _constant(value: float, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``shape`` backed by a single element (stride 0), so it costs nothing on disk."""
    return torch.full((1,), value, dtype=dtype).expand(shape) if len(shape) else torch.tensor(value, dtype=dtype)


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """The module owning each state-dict entry, by the entry's name."""
    return {
        f"{module_name}.{name}" if module_name else name: module
        for module_name, module in model.named_modules()
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    }


def _init_std(name: str, tensor: torch.Tensor, owner: nn.Module) -> float | None:
    """The random scale of a tensor (LeCun: 1/sqrt(fan-in)), or None when it gets a constant instead."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in {"bias", "running_mean", "running_var", "num_batches_tracked"} or isinstance(owner, _NORMS):
        return None
    if isinstance(owner, _LAYERS_WITH_FAN_IN):
        return tensor[0].numel() ** -0.5
    return EMBEDDING_STD


def compact_random_state_dict(model: nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A random state dict for ``model`` whose tensors share a few small storages.

    ``model`` may live on the meta device: only names, shapes and module types are read. Norm
    weights and running variances are 1, biases and running means 0, the rest random views.
    """
    owners = _owners(model)
    state = model.state_dict()
    scaled: dict[str, float] = {}
    constants: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        std = _init_std(name, tensor, owners[name])
        if std is not None:
            scaled[name] = std
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            constants[name] = torch.zeros((), dtype=tensor.dtype)
        else:
            one = leaf in {"weight", "running_var"}
            constants[name] = _constant(1.0 if one else 0.0, tensor.shape, STORED_DTYPE)

    generator = torch.Generator().manual_seed(seed)
    buffers: dict[float, torch.Tensor] = {}
    for std in sorted(set(scaled.values())):
        size = max(state[name].numel() for name, s in scaled.items() if s == std) + OFFSET_SLACK
        buffers[std] = (torch.randn(size, generator=generator) * std).to(STORED_DTYPE)
    views = {}
    for name, std in scaled.items():
        shape = state[name].shape
        offset = zlib.crc32(name.encode()) % OFFSET_SLACK
        views[name] = buffers[std][offset : offset + shape.numel()].view(shape)
    return {name: views[name] if name in views else constants[name] for name in state}


def build_tiny_annotators(folder: Path, kinds: Sequence[ControlKind]) -> None:
    """Write the random checkpoints of every kind's detector into ``folder``.

    Deterministic: two builds with the same libraries write identical files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        kind.write_random_detector_checkpoints(folder)


def ensure_tiny_annotators(weights_dir: Path, kinds: Sequence[ControlKind]) -> Path:
    """The folder of the kinds' random detector checkpoints under ``weights_dir``, built on first use."""
    # The writers' modules, imported: their source is part of the fingerprint.
    writers = [importlib.import_module(kind.random_detector_checkpoints.partition(":")[0]).__name__ for kind in kinds]
    return ensure_built(
        Path(weights_dir) / "tiny" / "annotators",
        builder_fingerprint(__name__, *writers),
        lambda folder: build_tiny_annotators(folder, kinds),
    )
