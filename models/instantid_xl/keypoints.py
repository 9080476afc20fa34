"""The five facial keypoints as InstantID's ControlNet sees them: the control image and the face's region.

Keypoints are fractions of the frame, ``[x / width, y / height]``, in InsightFace's order: the eye on
the image's left, the eye on its right, the nose tip, the mouth's left corner, its right corner. Fractions
(not pixels) let one face's keypoints be drawn at any output size, and saved keypoints fed back
give the same control image and mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import PIL.Image

# ArcFace's reference landmarks in its 112x112 aligned crop (the positions InsightFace aligns faces to).
ARCFACE_LANDMARKS_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# Share of the frame's width the aligned crop (about the face) spans in the default pose.
DEFAULT_FACE_WIDTH = 0.4


def _frontal_kps(face_width: float) -> np.ndarray:
    """ArcFace's reference landmarks, the crop centred in a square frame and ``face_width`` of it wide."""
    centred = ARCFACE_LANDMARKS_112 / 112.0 - 0.5
    return (0.5 + centred * face_width).astype(np.float32)


# A frontal face centred in the frame at a natural portrait size: the pose when no face photo gives one.
DEFAULT_FRONTAL_KPS: np.ndarray = _frontal_kps(DEFAULT_FACE_WIDTH)

# The control image's colours (RGB), one per keypoint; a limb takes its first point's colour.
KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
# Each limb joins an eye or a mouth corner to the nose (keypoint 2).
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_HALF_WIDTH = 4
LIMB_DIM = 0.6
POINT_RADIUS = 10

# face_region_mask: how far the face reaches beyond its keypoints, in keypoint spans (eyes to mouth).
FACE_MARGIN = 1.0
# The forehead and hair reach further above the eyes than the chin below the mouth.
FOREHEAD_FACTOR = 1.5


def to_pixels(size: tuple[int, int], kps: np.ndarray) -> np.ndarray:
    """Keypoint fractions as pixel positions (float) in a frame of ``size`` = (width, height)."""
    width, height = size
    return np.asarray(kps, dtype=np.float64).reshape(5, 2) * np.array([width, height], dtype=np.float64)


def _draw_limb(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, color: tuple[int, int, int]) -> None:
    """Fill the ellipse joining ``start`` and ``end`` (pixels), ``LIMB_HALF_WIDTH`` thick, in place."""
    centre = (start + end) / 2
    length = float(np.hypot(*(start - end)))
    angle = math.degrees(math.atan2(start[1] - end[1], start[0] - end[0]))
    polygon = cv2.ellipse2Poly(
        (int(centre[0]), int(centre[1])), (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1
    )
    cv2.fillConvexPoly(canvas, np.asarray(polygon, dtype=np.int32), color)


def draw_kps(size: tuple[int, int], kps: np.ndarray) -> PIL.Image.Image:
    """InstantID's keypoint control image of ``size`` = (width, height) for keypoint fractions ``kps``.

    Black, with the four limbs to the nose as filled ellipses dimmed to 60% and a disc at each keypoint in
    its own colour, drawn over the limbs: the picture InstantID's ControlNet was trained on.
    """
    width, height = size
    points = to_pixels(size, kps)
    limbs = np.zeros((height, width, 3), dtype=np.float64)
    for first, second in LIMBS:
        _draw_limb(limbs, points[first], points[second], KPS_COLORS[first])
    canvas = np.ascontiguousarray((limbs * LIMB_DIM).astype(np.uint8))
    for point, color in zip(points, KPS_COLORS, strict=True):
        cv2.circle(canvas, (int(point[0]), int(point[1])), POINT_RADIUS, color, -1)
    return PIL.Image.fromarray(canvas, mode="RGB")


def face_region_mask(size: tuple[int, int], kps: np.ndarray, margin: float = FACE_MARGIN) -> np.ndarray:
    """A float32 [height, width] mask: 1 on the face's box, 0 elsewhere (``enhance_face_region``).

    The keypoints span eyes to mouth only, so their box is widened by ``margin`` times its larger side
    on the left, the right and below, and ``FOREHEAD_FACTOR`` times that above, then clipped to the
    frame. A function of (size, kps) alone, so saved keypoints give the same mask.
    """
    width, height = size
    points = to_pixels(size, kps)
    low, high = points.min(axis=0), points.max(axis=0)
    reach = margin * float((high - low).max())
    left = max(0, math.floor(low[0] - reach))
    right = min(width, math.ceil(high[0] + reach))
    top = max(0, math.floor(low[1] - reach * FOREHEAD_FACTOR))
    bottom = min(height, math.ceil(high[1] + reach))
    mask = np.zeros((height, width), dtype=np.float32)
    mask[top:bottom, left:right] = 1.0
    return mask
