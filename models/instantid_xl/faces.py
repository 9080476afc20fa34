"""Face analysis for kiln/instantid-xl: InsightFace's detector and recognition model on onnxruntime.

A face photo gives InstantID two things: the identity embedding its adapter turns into tokens (ArcFace's
L2-normalised 512-vector) and the five keypoints its ControlNet is drawn from. ``FaceAnalyzer`` loads
antelopev2's detector (SCRFD) and recogniser (glintr100) from a folder and answers both for the largest
face in a photo, or raises ``NoFaceError`` naming the input field, which a user can act on.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

EMBEDDING_SIZE = 512
# InsightFace's model tasks InstantID uses (antelopev2 also ships landmark and gender/age models).
FACE_MODULES = ["detection", "recognition"]
CPU_PROVIDER = "CPUExecutionProvider"

# InsightFace's face alignment calls a scikit-image method deprecated since 0.26: a warning per face, in
# every worker's log, that no one here can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")


@dataclass(frozen=True, eq=False)
class Face:
    """One face: identity and pose.

    ``embedding``: float32 [512], L2-normalised (InsightFace's ``normed_embedding``).
    ``kps``: float32 [5, 2], the keypoints (left eye, right eye, nose, mouth left, mouth right as seen in
    the image) as fractions (x / width, y / height) of the photo.
    """

    embedding: np.ndarray
    kps: np.ndarray


class NoFaceError(ValueError):
    """The photo in ``field`` shows no face the detector finds."""

    def __init__(self, field: str) -> None:
        super().__init__(f"no face found in {field}: use a photo where one face is clearly visible")
        self.field = field


def l2_normalised(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to unit length, as float32."""
    vector = np.asarray(vector, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def average_faces(faces: Sequence[Face]) -> Face:
    """One identity from several photos: the mean of the unit embeddings, normalised again; the first's pose."""
    if not faces:
        raise ValueError("average_faces needs at least one face")
    mean = np.mean([l2_normalised(face.embedding) for face in faces], axis=0)
    return Face(embedding=l2_normalised(mean), kps=faces[0].kps)


def _bgr_array(image: PIL.Image.Image) -> np.ndarray:
    """An RGB PIL image as the contiguous uint8 BGR array InsightFace (OpenCV) expects."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _bbox_area(detected: Any) -> float:
    x1, y1, x2, y2 = (float(value) for value in detected.bbox[:4])
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class FaceAnalyzer:
    """InsightFace's detection and recognition models from ``model_dir``, for one face per photo.

    ``model_dir`` holds the .onnx files (antelopev2's layout, or the random-weight one of the tiny
    profiles); the models are told apart by their inputs and outputs, as InsightFace does. Safe to call
    from several threads (a prefetch thread and the main one): one call runs at a time.
    """

    def __init__(
        self,
        model_dir: str | Path,
        providers: Sequence[str] = (CPU_PROVIDER,),
        det_size: tuple[int, int] = (640, 640),
    ) -> None:
        # InsightFace imports onnxruntime, onnx and scikit-image: only where a face is analysed.
        from insightface.app.face_analysis import FaceAnalysis

        self._lock = threading.Lock()
        self._app = FaceAnalysis(name=str(model_dir), allowed_modules=FACE_MODULES, providers=list(providers))
        # ctx_id < 0 pins the sessions to the CPU; otherwise they keep the providers given.
        only_cpu = list(providers) == [CPU_PROVIDER]
        self._app.prepare(ctx_id=-1 if only_cpu else 0, det_size=tuple(det_size))

    def face(self, image: PIL.Image.Image, field: str) -> Face:
        """The largest face (by box area) in ``image``; ``NoFaceError(field)`` when there is none."""
        with self._lock:
            detected = self._app.get(_bgr_array(image))
        if not detected:
            raise NoFaceError(field)
        largest = max(detected, key=_bbox_area)
        size = np.array(image.size, dtype=np.float32)
        # A keypoint the detector puts past the edge is drawn on the edge.
        kps = np.clip(np.asarray(largest.kps, dtype=np.float32).reshape(5, 2) / size, 0.0, 1.0)
        return Face(embedding=l2_normalised(largest.normed_embedding), kps=kps.astype(np.float32))

    def average(self, images: Sequence[PIL.Image.Image], field: str) -> Face:
        """One identity from several photos of a person (``average_faces``); errors name ``field[i]``."""
        return average_faces([self.face(image, f"{field}[{index}]") for index, image in enumerate(images)])
