"""A renderer-free look at generated motion: keypoints and head-pose axes drawn per frame, with the speech.

Each frame drives the canonical keypoints as LivePortrait does (``x = s (x_c R + exp) + t``), drops
depth (orthographic projection: LivePortrait's keypoint space has x right and y down over about
[-1, 1] of the face crop), and draws the points, lips and eyes in their own colours, plus the head's
axes (the rows of ``R``: where the canonical x, y and z axes point). Frames are drawn and encoded one
at a time (``training.video_out``: H.264 at 25 fps, AAC audio), so memory does not grow with the audio length.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from shards.format import FPS
from shards.pose import transform_keypoints
from shards.vector import vector_to_motion
from training.template import EYE_KEYPOINTS, LIP_KEYPOINTS, neutral_canonical_kp
from training.video_out import TalkingVideoWriter

COLOURS = {"face": (200, 200, 200), "lip": (235, 60, 60), "eye": (70, 140, 255),
           "axis_x": (230, 60, 60), "axis_y": (60, 200, 60), "axis_z": (70, 110, 255)}
AXIS_LENGTH = 0.35  # in keypoint units, before the frame's scale


def project(points: np.ndarray, size: int) -> np.ndarray:
    """Keypoint-space (..., 3) -> pixel coordinates (..., 2) int, orthographic."""
    return np.round((points[..., :2] + 1.0) * 0.5 * size).astype(np.int32)


def draw_frame(x_d: np.ndarray, rot: np.ndarray, scale: float, centre: np.ndarray,
               angles: tuple[float, float, float], index: int, size: int) -> np.ndarray:
    """One RGB frame (size, size, 3) uint8 of driven keypoints ``x_d`` (21, 3) and the head axes."""
    img = np.full((size, size, 3), 24, dtype=np.uint8)
    radius = max(2, size // 128)
    pixels = project(x_d, size)
    for row, (px, py) in enumerate(pixels):
        group = "lip" if row in LIP_KEYPOINTS else "eye" if row in EYE_KEYPOINTS else "face"
        cv2.circle(img, (int(px), int(py)), radius, COLOURS[group], -1, cv2.LINE_AA)
    lip = pixels[list(LIP_KEYPOINTS)]
    hull = cv2.convexHull(lip.reshape(-1, 1, 2))
    cv2.polylines(img, [hull], True, COLOURS["lip"], 1, cv2.LINE_AA)

    origin = project(centre, size)
    for axis, name in enumerate(("axis_x", "axis_y", "axis_z")):
        tip = project(centre + AXIS_LENGTH * scale * rot[axis], size)
        cv2.arrowedLine(img, tuple(int(v) for v in origin), tuple(int(v) for v in tip),
                        COLOURS[name], max(1, size // 256), cv2.LINE_AA, tipLength=0.15)
    pitch, yaw, roll = angles
    text = f"{index / FPS:6.2f}s  pitch {pitch:+5.1f}  yaw {yaw:+5.1f}  roll {roll:+5.1f}"
    cv2.putText(img, text, (8, size - 10), cv2.FONT_HERSHEY_SIMPLEX, size / 1100,
                (235, 235, 235), 1, cv2.LINE_AA)
    return img


def render_preview(vector: np.ndarray, audio: np.ndarray, path: str | Path,
                   kp_c: np.ndarray | None = None, size: int = 512) -> Path:
    """Write an MP4 (H.264 25 fps + AAC) of the (T, 70) motion with ``audio`` (16 kHz mono float32).

    ``kp_c`` is the canonical keypoints to drive (21, 3); default the schematic neutral face.
    The file appears atomically.
    """
    size = int(size) + int(size) % 2  # yuv420p needs even sides
    motion = vector_to_motion(vector)
    kp = (neutral_canonical_kp() if kp_c is None
          else np.asarray(kp_c, dtype=np.float32).reshape(21, 3))
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    path = Path(path)
    with TalkingVideoWriter(path, size, size, audio, crf=23) as out:
        for i in range(len(vector)):
            x_d = transform_keypoints(kp, motion["scale"][i], motion["R"][i],
                                      motion["exp"][i], motion["t"][i])
            centre = x_d.mean(axis=0)
            angles = (float(motion["pitch"][i]), float(motion["yaw"][i]), float(motion["roll"][i]))
            out.write(draw_frame(x_d, motion["R"][i], float(motion["scale"][i, 0]), centre, angles, i, size))
    return path
