"""The random-weight antelopev2 layout: antelopev2's file names, models InsightFace recognises, same bytes
for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from insightface.model_zoo import get_model

from models.instantid_xl.fake_weights.face_models import DETECTOR_FILE, RECOGNIZER_FILE, write_random_antelopev2

FILES = [DETECTOR_FILE, RECOGNIZER_FILE]


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("finds_face", [False, True])
def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, finds_face: bool):
    write_random_antelopev2(tmp_path / "a", finds_face=finds_face)
    write_random_antelopev2(tmp_path / "b", finds_face=finds_face)
    write_random_antelopev2(tmp_path / "c", finds_face=finds_face, seed=1)
    assert sorted(contents(tmp_path / "a")) == sorted(FILES) == ["glintr100.onnx", "scrfd_10g_bnkps.onnx"]
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert all(contents(tmp_path / "a")[name] != contents(tmp_path / "c")[name] for name in FILES)


def test_insightface_routes_them_as_antelopev2s_detector_and_recogniser(no_face_models: Path):
    detector = get_model(str(no_face_models / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    recognizer = get_model(str(no_face_models / RECOGNIZER_FILE), providers=["CPUExecutionProvider"])
    assert (type(detector).__name__, detector.taskname, detector.use_kps) == ("SCRFD", "detection", True)
    assert detector._num_anchors == 2 and detector.static_input_size is None, "free input size, two anchors"
    assert (type(recognizer).__name__, recognizer.taskname) == ("ArcFaceONNX", "recognition")
    assert recognizer.input_size == (112, 112) and recognizer.input_mean == 127.5
