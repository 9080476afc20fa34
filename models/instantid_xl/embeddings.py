"""The face file ``return_embeddings`` writes and ``face_embedding`` reads: who, and where the face was.

A safetensors file with ``face_embedding`` (float32 ``[512]``, InsightFace's L2-normalised ArcFace
embedding; averaged and normalised again for several photos) and ``face_kps`` (float32 ``[5, 2]``: left
eye, right eye, nose, mouth corners, as fractions of the image's width and height). ``face_kps`` may be
left out of a file made elsewhere: the face is then placed by ``pose_image`` or a frontal default.
A prediction given the file skips the face models; the same seed then gives the same pixels.

Light (no torch): the API checks an uploaded file's header at submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.inputs.safetensors_files import check_tensors

FACE_EMBEDDING = "face_embedding"
FACE_KPS = "face_kps"
EMBEDDING_SIZE = 512
FLOAT_DTYPES = ("F32", "F16", "BF16")


def check_face_embedding_header(header: Mapping[str, Any]) -> None:
    """Refuse a ``face_embedding`` file whose tensors are not a face embedding (and optional keypoints)."""
    expected = {FACE_EMBEDDING: (FLOAT_DTYPES, [EMBEDDING_SIZE])}
    if FACE_KPS in header:
        expected[FACE_KPS] = (FLOAT_DTYPES, [5, 2])
    check_tensors(header, expected)
