"""Face-analysis fixtures: the random-weight antelopev2 layouts (one that never finds a face, as the tiny
profile's, and one that finds exactly one) and analyzers over them, built once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.instantid_xl.faces import FaceAnalyzer
from models.instantid_xl.fake_weights.face_models import write_random_antelopev2


@pytest.fixture(scope="module")
def no_face_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("antelopev2-no-face")
    write_random_antelopev2(folder)
    return folder


@pytest.fixture(scope="module")
def one_face_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("antelopev2-one-face")
    write_random_antelopev2(folder, finds_face=True)
    return folder


@pytest.fixture(scope="module")
def blind_analyzer(no_face_models: Path) -> FaceAnalyzer:
    return FaceAnalyzer(no_face_models)


@pytest.fixture(scope="module")
def analyzer(one_face_models: Path) -> FaceAnalyzer:
    return FaceAnalyzer(one_face_models)
