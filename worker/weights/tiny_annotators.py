"""Random-weight checkpoints for controlnet-aux's MiDaS and openpose detectors, stored compactly.

The tiny (and random-full) profile runs the same detectors as the full profile:
``MidasDetector.from_pretrained(folder)`` (DPT-hybrid, as ``lllyasviel/Annotators`` ships it) and
``OpenposeDetector.from_pretrained(folder)``, loaded through their real loaders. Those loaders build
fixed, full-size networks (MiDaS 123 M parameters; openpose body, hand and face 127 M) and
``torch.load`` a state dict into them, so there is no smaller architecture to choose; saved plainly,
random weights would take about 500 MB in fp16.

Here every weight tensor is instead a view into one random buffer shared by all tensors with the same
initialisation scale (``torch.save`` keeps shared storage), and every norm weight, bias and running
statistic is a single broadcast value, so the four files take about 60 MB and build in a second, yet
load into the real architectures. Tensors start at different offsets of their buffer so that layers
differ. The weights are random: the depth map is an image-dependent texture, not depth, and openpose
finds no person, so its pose map is black.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from torch import nn

from worker.weights.tiny import builder_fingerprint, ensure_built

SEED = 0
MIDAS_FILENAME = "dpt_hybrid-midas-501f0c75.pt"
BODY_FILENAME = "body_pose_model.pth"
HAND_FILENAME = "hand_pose_model.pth"
FACE_FILENAME = "facenet.pth"
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
    return {name: views.get(name, constants.get(name)) for name in state}


def _midas_model() -> nn.Module:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    # The architecture MidasDetector builds for model_type="dpt_hybrid".
    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def _openpose_models() -> dict[str, nn.Module]:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    return {BODY_FILENAME: bodypose_model(), HAND_FILENAME: handpose_model(), FACE_FILENAME: FaceNet()}


def _strip_top_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # controlnet-aux's openpose loader (util.transfer) expects keys without the model's first level.
    return {name.split(".", 1)[1]: tensor for name, tensor in state.items()}


def build_tiny_annotators(folder: Path) -> None:
    """Write random MiDaS DPT-hybrid and openpose body/hand/face checkpoints into ``folder``.

    Deterministic: two builds with the same libraries write identical files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        midas = _midas_model()
        openpose = _openpose_models()
    torch.save(compact_random_state_dict(midas, SEED), folder / MIDAS_FILENAME)
    for index, (filename, model) in enumerate(openpose.items(), start=1):
        state = compact_random_state_dict(model, SEED + index)
        torch.save(state if filename == FACE_FILENAME else _strip_top_level(state), folder / filename)


def ensure_tiny_annotators(weights_dir: Path) -> Path:
    """The folder of the random annotator checkpoints under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "annotators",
        builder_fingerprint(__name__),
        build_tiny_annotators,
    )
