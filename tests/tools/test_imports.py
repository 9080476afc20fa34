"""Every tool (make bench, make chaos, the GPU kit) imports: a moved helper breaks the tool here, not
on the day someone runs it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tools

TOOL_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(tools.__path__, "tools.") if not info.name.endswith("__main__")
)


def test_the_tools_are_found():
    assert {"tools.bench", "tools.chaos", "tools.gpu_kit.truth"} <= set(TOOL_MODULES)


@pytest.mark.parametrize("name", TOOL_MODULES)
def test_each_tool_module_imports(name):
    importlib.import_module(name)
