"""Face crops from landmarks, computed as LivePortrait's ``src/utils/crop.py`` computes them.

The motion extractor was trained on these crops and LivePortrait's renderer feeds it the same, so
the pipeline (driving clips) and the trainer (a source portrait) crop alike here.

The face's frame comes from two points, the eye centre and the lip centre: ``uy`` points from the
eyes to the lips, ``ux = (uy_y, -uy_x)``, and the angle is that of ``ux`` (clockwise positive in image
coordinates). All landmarks are projected on (ux, uy); their min/max give the box's centre and size,
the box is squared (its longer side), times ``scale``, and its centre moved by ``vx_ratio * size``
along ux and ``vy_ratio * size`` along uy (negative: towards the forehead).

* A still source image: ``liveportrait_crop_matrix`` (scale 2.3, vy -0.125, rotated upright),
  512 px, then area-resized to 256.
* A driving video: ``driving_box`` per frame (scale 2.2, vy -0.1, the box left axis-aligned: only
  its centre and size come from the face's frame), ``average_boxes`` over the clip, one
  ``box_crop_matrix`` for every frame, 512 px, then resized to 256.

Landmark layouts are told apart by their count: 68 (iBUG, dlib), 106 (InsightFace 2d106det),
203 (LivePortrait's landmark model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CROP_SIZE = 512               # LivePortrait cuts at this size, then resizes to the network's 256
SOURCE_SCALE = 2.3            # crop_cfg.scale
SOURCE_VX_RATIO = 0.0         # crop_cfg.vx_ratio
SOURCE_VY_RATIO = -0.125      # crop_cfg.vy_ratio
DRIVING_SCALE = 2.2           # crop_cfg.scale_crop_driving_video
DRIVING_VY_RATIO = -0.1       # crop_cfg.vy_ratio_crop_driving_video (its vx is never passed on: 0)
# syncnet_python's whole-face crop around a detector box: the box grown by --crop_scale, padded
# with this grey outside the frame, at SyncNet's input size (the job's and the benchmark's crops).
SYNCNET_CROP_SCALE = 0.40
SYNCNET_PAD_VALUE = 110
SYNCNET_SIZE = 224

# Per layout: the points averaged into each eye's centre, and the two averaged into the lip centre.
EYE_AND_LIP_POINTS: dict[int, tuple[list[int], list[int], list[int]]] = {
    68: ([36, 39], [42, 45], [48, 54]),                        # iBUG 1-based 37,40 / 43,46 / 49,55
    106: ([33, 35, 40, 39], [87, 89, 94, 93], [52, 61]),       # InsightFace 2d106det
    203: ([0, 6, 12, 18], [24, 30, 36, 42], [48, 66]),         # LivePortrait 203 points
}
LAYOUT_NAMES = {68: "ibug68", 106: "insightface106", 203: "liveportrait203"}


@dataclass(frozen=True)
class FaceRect:
    """A square around a face in its own frame: centre (x, y), side, and angle (radians)."""

    centre: np.ndarray
    size: float
    angle: float


def check_points(points: np.ndarray) -> np.ndarray:
    """``points`` as a finite (N, 2) float64 array in a known layout, or a clear error."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"landmarks must be (N, 2), got shape {points.shape}")
    if len(points) not in EYE_AND_LIP_POINTS:
        raise ValueError(f"unknown landmark layout with {len(points)} points; "
                         f"known: {', '.join(f'{n} ({LAYOUT_NAMES[n]})' for n in EYE_AND_LIP_POINTS)}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks must be finite")
    return points


def eye_and_lip_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two points that fix the face's orientation: the mean of both eye centres, the lip centre."""
    points = check_points(points)
    left, right, lips = EYE_AND_LIP_POINTS[len(points)]
    eye = (points[left].mean(axis=0) + points[right].mean(axis=0)) / 2
    return eye, points[lips].mean(axis=0)


def face_rect(points: np.ndarray, scale: float, vx_ratio: float, vy_ratio: float) -> FaceRect:
    """The square crop rect of ``points`` (LivePortrait's ``parse_rect_from_landmark``)."""
    points = check_points(points)
    eye, lip = eye_and_lip_centres(points)
    uy = lip - eye
    length = float(np.linalg.norm(uy))
    uy = uy / length if length > 1e-3 else np.asarray([0.0, 1.0])  # eyes on the lips: upright
    ux = np.asarray([uy[1], -uy[0]])
    angle = float(np.arccos(np.clip(ux[0], -1.0, 1.0)))
    if ux[1] < 0:
        angle = -angle
    mean = points.mean(axis=0)
    projected = (points - mean) @ np.stack([ux, uy]).T
    low, high = projected.min(axis=0), projected.max(axis=0)
    mid = (low + high) / 2
    size = float(max(high - low)) * scale
    centre = mean + ux * mid[0] + uy * mid[1]
    centre = centre + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    return FaceRect(centre, size, angle)


def rect_matrix(rect: FaceRect, dsize: int, rotate: bool) -> np.ndarray:
    """3x3 original-to-crop matrix: ``rect`` to a ``dsize`` square, turned upright when ``rotate``."""
    if rect.size <= 0:
        raise ValueError(f"crop side must be positive, got {rect.size}")
    s = dsize / rect.size
    cos, sin = (np.cos(rect.angle), np.sin(rect.angle)) if rotate else (1.0, 0.0)
    cx, cy = rect.centre
    half = dsize / 2
    return np.asarray([[s * cos, s * sin, half - s * (cos * cx + sin * cy)],
                       [-s * sin, s * cos, half - s * (-sin * cx + cos * cy)],
                       [0.0, 0.0, 1.0]])


def liveportrait_crop_matrix(points: np.ndarray, dsize: int = CROP_SIZE, scale: float = SOURCE_SCALE,
                             vx_ratio: float = SOURCE_VX_RATIO, vy_ratio: float = SOURCE_VY_RATIO,
                             rotate: bool = True) -> np.ndarray:
    """3x3 original-to-crop matrix of one face (LivePortrait's ``_estimate_similar_transform_from_pts``);
    the defaults are its source-image settings. Warp with ``cv2.warpAffine(img, M[:2], (dsize, dsize))``."""
    return rect_matrix(face_rect(points, scale, vx_ratio, vy_ratio), dsize, rotate)


def driving_box(points: np.ndarray, scale: float = DRIVING_SCALE, vy_ratio: float = DRIVING_VY_RATIO) -> np.ndarray:
    """One frame's axis-aligned box ``x1, y1, x2, y2`` for a driving video (``parse_bbox_from_landmark``)."""
    rect = face_rect(points, scale, 0.0, vy_ratio)
    half = rect.size / 2
    cx, cy = rect.centre
    return np.asarray([cx - half, cy - half, cx + half, cy + half])


def average_boxes(boxes: np.ndarray) -> np.ndarray:
    """The clip's one box: the per-frame boxes averaged (``average_bbox_lst``)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or not np.isfinite(boxes).all():
        raise ValueError("need at least one finite box to average")
    return boxes.mean(axis=0)


def box_crop_matrix(box: np.ndarray, dsize: int = CROP_SIZE) -> np.ndarray:
    """3x3 original-to-crop matrix of an axis-aligned box (``crop_image_by_bbox`` without rotation;
    the side is the box's width)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return rect_matrix(FaceRect(np.asarray([(x1 + x2) / 2, (y1 + y2) / 2]), x2 - x1, 0.0), dsize, False)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 2x3 or 3x3 affine matrix."""
    matrix = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ matrix[:2, :2].T + matrix[:2, 2]
