"""The GPU kit's compiled modes: a graph break under ``fullgraph`` costs one attempt, not the measurement."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tools.gpu_kit.fastpath import with_graph_break_fallback


def test_a_graph_break_is_measured_again_in_pieces_and_reported() -> None:
    attempts: list[bool] = []

    def measure(fullgraph: bool) -> dict[str, Any]:
        attempts.append(fullgraph)
        if fullgraph:
            raise torch._dynamo.exc.Unsupported("graph break in forward")
        return {"fullgraph": fullgraph}

    entry = with_graph_break_fallback(measure)
    assert attempts == [True, False]
    assert entry["fullgraph"] is False and "graph break in forward" in entry["fullgraph_error"]


def test_a_whole_graph_is_measured_once_and_another_error_is_not_retried() -> None:
    attempts: list[bool] = []

    def whole(fullgraph: bool) -> dict[str, Any]:
        attempts.append(fullgraph)
        return {"fullgraph": fullgraph}

    assert with_graph_break_fallback(whole) == {"fullgraph": True} and attempts == [True]

    def out_of_memory(fullgraph: bool) -> dict[str, Any]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        with_graph_break_fallback(out_of_memory)
