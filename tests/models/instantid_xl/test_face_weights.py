"""Where the face models come from per weights profile: built once for tiny and random-full, a local or
downloaded folder (nested or not) for full."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.instantid_xl.face_weights import face_models_dir, onnx_folder
from shared.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, device="cpu", **values)


def test_tiny_and_random_full_share_one_random_layout_built_once(tmp_path: Path):
    tiny = face_models_dir(settings(weights_profile="tiny", weights_dir=tmp_path))
    assert tiny == tmp_path / "tiny" / "antelopev2"
    assert sorted(path.name for path in tiny.glob("*.onnx")) == ["glintr100.onnx", "scrfd_10g_bnkps.onnx"]
    built = {path.name: path.stat().st_mtime_ns for path in tiny.iterdir()}
    assert face_models_dir(settings(weights_profile="random-full", weights_dir=tmp_path)) == tiny
    assert {path.name: path.stat().st_mtime_ns for path in tiny.iterdir()} == built, "not built again"


@pytest.mark.parametrize("nested", ["", "antelopev2", "models/antelopev2"])
def test_full_weights_in_a_local_folder_are_found_nested_or_not(tmp_path: Path, nested: str):
    folder = tmp_path / nested
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        (folder / name).write_bytes(b"")
    (tmp_path / "README.md").write_text("antelopev2")
    assert face_models_dir(settings(weights_profile="full", insightface_weights=str(tmp_path))) == folder


def test_a_folder_without_face_models_says_which_setting_to_change(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="KILN_INSIGHTFACE_WEIGHTS"):
        onnx_folder(tmp_path)
