"""LivePortrait's landmark crop (shards.crop) against boxes and matrices computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from shards.crop import (
    EYE_AND_LIP_POINTS,
    average_boxes,
    box_crop_matrix,
    driving_box,
    eye_and_lip_centres,
    liveportrait_crop_matrix,
    transform_points,
)


def upright_face(n: int) -> np.ndarray:
    """Landmarks of an upright face in layout ``n``: eyes at (130, 130) and (170, 130), lip corners at
    (135, 190) and (165, 190), the rest spread over x 100..200, y 100..220 with a mean off the box
    centre (most points crowd the lower left), so a centre taken from the mean would be wrong."""
    rng = np.random.default_rng(n)
    points = np.column_stack([rng.uniform(100, 140, n), rng.uniform(170, 220, n)])
    left, right, lips = EYE_AND_LIP_POINTS[n]
    others = [i for i in range(n) if i not in left + right + lips]
    points[others[:3]] = [(100, 100), (200, 220), (150, 150)]  # the extent's corners
    points[left] = (130, 130)
    points[right] = (170, 130)
    points[lips] = [(135, 190), (165, 190)]
    return points


def rotate(points: np.ndarray, degrees: float, about=(150.0, 150.0)) -> tuple[np.ndarray, np.ndarray]:
    """Points turned by ``degrees`` (counter-clockwise on screen) and the 3x3 matrix that did it."""
    a = np.radians(-degrees)  # image y points down
    r = np.asarray([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    about = np.asarray(about)
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = r, about - r @ about
    return transform_points(points, matrix), matrix


@pytest.mark.parametrize("n", [68, 106, 203])
def test_source_crop_matrix_of_an_upright_face_by_hand(n):
    points = upright_face(n)
    eye, lip = eye_and_lip_centres(points)
    np.testing.assert_allclose(eye, [150, 130])
    np.testing.assert_allclose(lip, [150, 190])
    # Upright: no angle. Extent x 100..200, y 100..220 -> centre (150, 160), side max(100, 120) = 120,
    # times 2.3 = 276; moved up by 0.125 * 276 = 34.5 -> centre (150, 125.5); s = 512 / 276.
    s = 512 / 276
    expected = [[s, 0, 256 - s * 150], [0, s, 256 - s * 125.5], [0, 0, 1]]
    np.testing.assert_allclose(liveportrait_crop_matrix(points), expected, atol=1e-9)
    # vx moves along the face's x axis: +0.1 * 276 = 27.6 px right.
    np.testing.assert_allclose(liveportrait_crop_matrix(points, vx_ratio=0.1)[0, 2], 256 - s * 177.6, atol=1e-9)
    # Other size and scale: 256 px, scale 1.5 -> side 180, centre y 160 - 22.5.
    s = 256 / 180
    np.testing.assert_allclose(liveportrait_crop_matrix(points, dsize=256, scale=1.5),
                               [[s, 0, 128 - s * 150], [0, s, 128 - s * 137.5], [0, 0, 1]], atol=1e-9)


@pytest.mark.parametrize("degrees", [30.0, -75.0, 180.0])
def test_a_rotated_face_gives_the_rotated_matrix(degrees):
    points = upright_face(106)
    turned, turn = rotate(points, degrees)
    upright = liveportrait_crop_matrix(points)
    # Turned upright again: the crop of the turned face is the upright crop after undoing the turn.
    np.testing.assert_allclose(liveportrait_crop_matrix(turned), upright @ np.linalg.inv(turn), atol=1e-9)
    np.testing.assert_allclose(transform_points(turned, liveportrait_crop_matrix(turned)),
                               transform_points(points, upright), atol=1e-9)
    # Without rotation the crop stays axis-aligned: same scale and centre, no rotation.
    flat = liveportrait_crop_matrix(turned, rotate=False)
    np.testing.assert_allclose(flat[:2, :2], np.eye(2) * 512 / 276, atol=1e-12)
    centre = transform_points([[150.0, 125.5]], turn)[0]
    np.testing.assert_allclose(transform_points([centre], flat)[0], [256, 256], atol=1e-9)


def test_driving_box_by_hand_and_rotated():
    points = upright_face(68)
    # Scale 2.2: side 264, centre (150, 160 - 0.1 * 264 = 133.6).
    np.testing.assert_allclose(driving_box(points), [18, 1.6, 282, 265.6], atol=1e-9)
    # A turned face keeps an axis-aligned box of the same side around the turned centre.
    turned, turn = rotate(points, 40.0)
    cx, cy = transform_points([[150.0, 133.6]], turn)[0]
    np.testing.assert_allclose(driving_box(turned), [cx - 132, cy - 132, cx + 132, cy + 132], atol=1e-9)


def test_the_clip_box_averages_frames_and_crops_without_rotation():
    boxes = [[18, 1.6, 282, 265.6], [38, 11.6, 322, 295.6]]
    np.testing.assert_allclose(average_boxes(boxes), [28, 6.6, 302, 280.6])
    # Side 274 -> s = 512 / 274 around the centre (165, 143.6).
    s = 512 / 274
    np.testing.assert_allclose(box_crop_matrix(average_boxes(boxes)),
                               [[s, 0, 256 - s * 165], [0, s, 256 - s * 143.6], [0, 0, 1]], atol=1e-9)


def test_degenerate_eyes_on_lips_count_as_upright():
    points = upright_face(68)
    left, right, lips = EYE_AND_LIP_POINTS[68]
    points[left + right + lips] = (150, 160)
    assert liveportrait_crop_matrix(points)[0, 1] == 0.0


def test_bad_landmarks_are_refused():
    with pytest.raises(ValueError, match="unknown landmark layout with 5 points"):
        liveportrait_crop_matrix(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        liveportrait_crop_matrix(np.zeros((68, 3)))
    points = upright_face(68)
    points[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        driving_box(points)
    with pytest.raises(ValueError, match="at least one"):
        average_boxes(np.zeros((0, 4)))
