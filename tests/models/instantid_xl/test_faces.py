"""FaceAnalyzer over InsightFace with the random-weight antelopev2 layouts: the no-face answer, one face's
identity and pose, several photos averaged into one identity."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from models.instantid_xl.faces import EMBEDDING_SIZE, Face, FaceAnalyzer, NoFaceError, average_faces
from models.instantid_xl.fake_weights import face_models
from models.instantid_xl.keypoints import ARCFACE_LANDMARKS_112
from tests.models.instantid_xl.photos import portrait


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_photo_without_a_detected_face_names_the_field(blind_analyzer: FaceAnalyzer):
    with pytest.raises(NoFaceError, match=r"^no face found in face_image: use a photo where one face") as error:
        blind_analyzer.face(portrait(0), "face_image")
    assert isinstance(error.value, ValueError)
    assert error.value.field == "face_image"


def test_a_found_face_has_a_unit_embedding_and_keypoint_fractions(analyzer: FaceAnalyzer):
    face = analyzer.face(portrait(0), "face_image")
    assert face.embedding.shape == (EMBEDDING_SIZE,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32
    assert ((face.kps >= 0) & (face.kps <= 1)).all()


def test_keypoints_are_fractions_of_the_photo_whatever_its_size(analyzer: FaceAnalyzer):
    """The fake detector puts its face at fixed pixels of its 640-pixel input, into which a square photo
    is scaled whole: the fractions are the same for a 512- and a 900-pixel photo."""
    stride, (row, column) = face_models.FACE_STRIDE, face_models.FACE_CELL
    offsets = (ARCFACE_LANDMARKS_112 / 112 - 0.5) * face_models.FACE_SIZE
    expected = (np.array([column * stride, row * stride]) + offsets) / 640
    for side in (512, 900):
        face = analyzer.face(portrait(1, size=(side, side)), "face_image")
        np.testing.assert_allclose(face.kps, expected, atol=2 / side)
    assert face.kps[0, 0] < face.kps[1, 0], "the left eye is left of the right eye"


def test_the_embedding_depends_on_the_photo(analyzer: FaceAnalyzer):
    first, again, other = (analyzer.face(portrait(seed), "face_image") for seed in (0, 0, 1))
    np.testing.assert_array_equal(first.embedding, again.embedding)
    assert cosine(first.embedding, other.embedding) < 0.99


def test_the_largest_face_wins(analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch):
    """A group photo gives the biggest face (by box area), not the detector's first or most confident."""

    def detected(box: list[float], value: float) -> SimpleNamespace:
        kps = np.full((5, 2), box[0], dtype=np.float32)
        embedding = np.full(EMBEDDING_SIZE, value, dtype=np.float32)
        return SimpleNamespace(bbox=np.array(box), kps=kps, normed_embedding=embedding)

    faces = [detected([10, 10, 60, 60], 1.0), detected([100, 100, 300, 300], -1.0), detected([0, 0, 90, 90], 2.0)]
    monkeypatch.setattr(analyzer._app, "get", lambda image: faces)
    face = analyzer.face(portrait(0, size=(400, 400)), "face_image")
    assert (face.embedding < 0).all()
    np.testing.assert_allclose(face.kps, np.full((5, 2), 100 / 400))


def test_calls_from_two_threads_give_what_one_thread_gives(analyzer: FaceAnalyzer):
    photos = [portrait(seed) for seed in range(4)] * 2
    alone = [analyzer.face(photo, "face_image").embedding for photo in photos]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda photo: analyzer.face(photo, "face_image").embedding, photos))
    for expected, got in zip(alone, together, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_average_is_the_normalised_mean_of_the_unit_embeddings(analyzer: FaceAnalyzer):
    photos = [portrait(seed) for seed in (0, 1, 2)]
    faces = [analyzer.face(photo, "face_images") for photo in photos]
    averaged = analyzer.average(photos, "face_images")
    mean = np.mean([face.embedding for face in faces], axis=0)
    np.testing.assert_allclose(averaged.embedding, mean / np.linalg.norm(mean), atol=1e-6)
    assert np.linalg.norm(averaged.embedding) == pytest.approx(1.0, abs=1e-5)
    assert all(cosine(averaged.embedding, face.embedding) < 0.999 for face in faces)
    np.testing.assert_array_equal(averaged.kps, faces[0].kps)


def test_average_of_one_photo_is_that_photo(analyzer: FaceAnalyzer):
    photo = portrait(3)
    np.testing.assert_allclose(
        analyzer.average([photo], "face_images").embedding, analyzer.face(photo, "face_images").embedding, atol=1e-6
    )


def test_average_names_the_photo_without_a_face(blind_analyzer: FaceAnalyzer):
    with pytest.raises(NoFaceError, match=r"^no face found in face_images\[0\]:"):
        blind_analyzer.average([portrait(0), portrait(1)], "face_images")


def test_average_faces_normalises_what_it_is_given():
    first = Face(embedding=np.array([3.0, 0.0], dtype=np.float32), kps=np.zeros((5, 2), dtype=np.float32))
    second = Face(embedding=np.array([0.0, 0.5], dtype=np.float32), kps=np.ones((5, 2), dtype=np.float32))
    averaged = average_faces([first, second])
    np.testing.assert_allclose(averaged.embedding, [2**-0.5, 2**-0.5], atol=1e-6)
    assert averaged.kps is first.kps
    with pytest.raises(ValueError, match="at least one face"):
        average_faces([])


def test_insightface_gets_the_photo_as_opencv_bgr(analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch):
    seen: list[np.ndarray] = []
    monkeypatch.setattr(analyzer._app, "get", lambda image: seen.append(image) or [])
    photo = portrait(0).convert("RGBA")
    with pytest.raises(NoFaceError):
        analyzer.face(photo, "face_image")
    np.testing.assert_array_equal(seen[0], np.asarray(photo.convert("RGB"))[:, :, ::-1])
    assert seen[0].dtype == np.uint8 and seen[0].flags.c_contiguous
