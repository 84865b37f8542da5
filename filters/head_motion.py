"""Head-motion excess from the extracted pose and translation (JoyVASA drops clips that move too much).

Scores, per clip, from the raw motion-extractor outputs at 25 fps:

- ``pose_range_deg``: the largest spread of pitch, yaw or roll, as the 98th minus the 2nd
  percentile (robust to a single mis-estimated frame);
- ``pose_speed_deg_s``: the 95th percentile over frames of the fastest axis' angular speed;
- ``t_range`` / ``t_speed``: the same for the in-plane translation (tx, ty; LivePortrait drops tz),
  in the extractor's normalised image units and units per second.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from shards.pose import logits_to_degrees
from shards.format import FPS

LOW_PCT, HIGH_PCT, SPEED_PCT = 2.0, 98.0, 95.0


def _spread(values: np.ndarray) -> float:
    """Largest robust range over the columns of (T, k) values."""
    if len(values) < 2:
        return 0.0
    lo, hi = np.percentile(values, [LOW_PCT, HIGH_PCT], axis=0)
    return float(np.max(hi - lo))


def _speed(per_frame_step: np.ndarray, fps: float) -> float:
    if len(per_frame_step) == 0:
        return 0.0
    return float(np.percentile(per_frame_step, SPEED_PCT) * fps)


def head_motion_scores(motion: Mapping[str, np.ndarray], fps: float = FPS) -> dict[str, float]:
    """Range and speed of pose (degrees) and translation from raw extractor outputs."""
    angles = np.stack([logits_to_degrees(np.asarray(motion[k])).reshape(-1)
                       for k in ("pitch", "yaw", "roll")], axis=1).astype(np.float64)
    t_xy = np.asarray(motion["t"], dtype=np.float64).reshape(len(angles), 3)[:, :2]
    return {
        "pose_range_deg": _spread(angles),
        "pose_speed_deg_s": _speed(np.abs(np.diff(angles, axis=0)).max(axis=1), fps),
        "t_range": _spread(t_xy),
        "t_speed": _speed(np.linalg.norm(np.diff(t_xy, axis=0), axis=1), fps),
    }


def check_head_motion(scores: Mapping[str, float], max_pose_range_deg: float,
                      max_pose_speed_deg_s: float, max_t_range: float, max_t_speed: float) -> str | None:
    """The first exceeded limit as a rejection reason, or None."""
    if scores["pose_range_deg"] > max_pose_range_deg:
        return "pose_range"
    if scores["pose_speed_deg_s"] > max_pose_speed_deg_s:
        return "pose_speed"
    if scores["t_range"] > max_t_range:
        return "translation_range"
    if scores["t_speed"] > max_t_speed:
        return "translation_speed"
    return None
