"""Where a worker runs its pipelines: the torch device and the dtype that suits it."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """The device for a ``device`` setting: ``auto`` picks CUDA when available, else the CPU.

    Any other value (``cpu``, ``cuda``, ``cuda:1``) is used as given, so a misconfigured GPU
    fails at startup instead of silently running on the CPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dtype_for(device: torch.device, cuda_dtype: str = "float16") -> torch.dtype:
    """Half precision on CUDA (half the memory, tensor cores): fp16, or bf16 when ``cuda_dtype`` says so;
    float32 elsewhere, where half precision is slow or unsupported."""
    return getattr(torch, cuda_dtype) if device.type == "cuda" else torch.float32
