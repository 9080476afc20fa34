"""The keypoint control image InstantID's ControlNet reads, the default pose, and the face's region."""

from __future__ import annotations

import numpy as np

from models.instantid_xl.keypoints import DEFAULT_FRONTAL_KPS, KPS_COLORS, draw_kps, face_region_mask

SIZE = (320, 256)  # (width, height): not square, so x and y scale differently
# Spread out so that no two discs touch.
KPS = np.array([[0.3, 0.3], [0.7, 0.3], [0.5, 0.55], [0.3, 0.8], [0.7, 0.8]], dtype=np.float32)


def pixel(kps: np.ndarray, index: int) -> tuple[int, int]:
    """(row, column) of keypoint ``index`` in a SIZE frame."""
    return int(kps[index, 1] * SIZE[1]), int(kps[index, 0] * SIZE[0])


def test_each_keypoint_is_a_disc_of_its_colour_where_its_fractions_say():
    image = draw_kps(SIZE, KPS)
    assert image.size == SIZE and image.mode == "RGB"
    rgb = np.asarray(image)
    for index, color in enumerate(KPS_COLORS):
        row, column = pixel(KPS, index)
        assert tuple(rgb[row, column]) == color
        assert tuple(rgb[row + 9, column]) == color, "a disc of radius 10"
        assert tuple(rgb[row + 14, column]) != color


def test_limbs_join_the_nose_dimmed_in_their_first_points_colour():
    rgb = np.asarray(draw_kps(SIZE, KPS))
    dimmed = tuple(int(channel * 0.6) for channel in KPS_COLORS[0])
    (eye_row, eye_column), (nose_row, nose_column) = pixel(KPS, 0), pixel(KPS, 2)
    assert tuple(rgb[(eye_row + nose_row) // 2, (eye_column + nose_column) // 2]) == dimmed
    assert tuple(rgb[5, 5]) == (0, 0, 0), "the background is black"
    assert tuple(rgb[pixel(KPS, 0)[0], SIZE[0] // 2]) == (0, 0, 0), "no limb joins the eyes"


def test_the_same_fractions_draw_the_same_face_at_any_size():
    small, large = np.asarray(draw_kps((256, 256), KPS)), np.asarray(draw_kps((1024, 1024), KPS))
    for index, color in enumerate(KPS_COLORS):
        assert tuple(small[int(KPS[index, 1] * 256), int(KPS[index, 0] * 256)]) == color
        assert tuple(large[int(KPS[index, 1] * 1024), int(KPS[index, 0] * 1024)]) == color


def test_the_default_pose_is_a_frontal_face_centred_in_the_frame():
    kps = DEFAULT_FRONTAL_KPS
    assert kps.shape == (5, 2) and kps.dtype == np.float32
    assert ((kps > 0.2) & (kps < 0.8)).all()
    (left_eye, right_eye, nose, mouth_left, mouth_right) = kps
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert abs(nose[0] - 0.5) < 0.02, "centred"
    assert 0.1 < right_eye[0] - left_eye[0] < 0.15, "eyes about a third of a face 40% of the frame wide"


def test_the_face_region_covers_the_face_around_its_keypoints():
    kps = DEFAULT_FRONTAL_KPS
    mask = face_region_mask(SIZE, kps)
    assert mask.shape == (SIZE[1], SIZE[0]) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}
    for index in range(5):
        row, column = int(kps[index, 1] * SIZE[1]), int(kps[index, 0] * SIZE[0])
        assert mask[row, column] == 1.0
    eyes_row, span = int(kps[0, 1] * SIZE[1]), int((kps[:, 1].max() - kps[:, 1].min()) * SIZE[1])
    assert mask[eyes_row - int(1.4 * span), int(kps[2, 0] * SIZE[0])] == 1.0, "the forehead is in"
    assert mask[0, 0] == mask[-1, -1] == mask[0, -1] == mask[-1, 0] == 0.0, "the corners are out"


def test_the_face_region_is_clipped_to_the_frame_and_a_function_of_size_and_keypoints():
    near_edge = KPS * 0.3
    mask = face_region_mask(SIZE, near_edge)
    assert mask.shape == (SIZE[1], SIZE[0]) and mask[0, 0] == 1.0 and mask[-1, -1] == 0.0
    saved = np.array(near_edge.tolist(), dtype=np.float64)  # as stored and read back
    np.testing.assert_array_equal(face_region_mask(SIZE, saved), mask)
    assert face_region_mask(SIZE, KPS, margin=0.5).sum() < face_region_mask(SIZE, KPS).sum()
