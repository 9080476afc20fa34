"""Device and dtype choice for the ``device`` setting."""

from __future__ import annotations

import pytest
import torch

from models.kit.devices import dtype_for, resolve_device


def test_auto_prefers_cuda_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_an_explicit_device_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_half_precision_only_on_cuda() -> None:
    assert dtype_for(torch.device("cuda")) == torch.float16
    assert dtype_for(torch.device("cpu")) == torch.float32
