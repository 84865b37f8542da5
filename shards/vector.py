"""The 70-dim per-frame training vector, derived from the raw motion-extractor outputs.

Layout (JoyVASA's public code): ``exp`` (63) + ``scale`` (1) + ``t`` (3) + pitch, yaw, roll in
degrees (3). Shards keep the raw arrays; this is the one place that turns them into the vector
and back, so a change of representation never needs the models to run again.
"""
from __future__ import annotations

import numpy as np

from shards.pose import logits_to_degrees, rotation_matrix

VECTOR_DIM = 70
EXP_DIMS = slice(0, 63)
SCALE_DIMS = slice(63, 64)
T_DIMS = slice(64, 67)
ANGLE_DIMS = slice(67, 70)
POSE_DIMS = slice(63, 70)  # scale, t and angles: min-max scaled; expression is z-scored
NAMES = ([f"exp_{k}_{a}" for k in range(21) for a in "xyz"] + ["scale", "tx", "ty", "tz"]
         + ["pitch", "yaw", "roll"])


def motion_to_vector(motion: dict[str, np.ndarray]) -> np.ndarray:
    """Raw arrays (``exp``, ``scale``, ``t``, ``pitch``/``yaw``/``roll`` logits) -> (T, 70) float32.

    Angles may also be given already in degrees as ``pitch_deg`` etc. (generated motion).
    """
    exp = np.asarray(motion["exp"], dtype=np.float32)
    n = exp.shape[0]
    angles = []
    for name in ("pitch", "yaw", "roll"):
        if f"{name}_deg" in motion:
            angles.append(np.asarray(motion[f"{name}_deg"], dtype=np.float32).reshape(n))
        else:
            angles.append(logits_to_degrees(np.asarray(motion[name])).reshape(n))
    return np.concatenate([
        exp.reshape(n, 63),
        np.asarray(motion["scale"], dtype=np.float32).reshape(n, 1),
        np.asarray(motion["t"], dtype=np.float32).reshape(n, 3),
        np.stack(angles, axis=1),
    ], axis=1).astype(np.float32)


def vector_to_motion(vec: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 70) -> ``exp`` (T,21,3), ``scale`` (T,1), ``t`` (T,3), angles in degrees (T,), ``R`` (T,3,3)."""
    vec = np.asarray(vec, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[1] != VECTOR_DIM:
        raise ValueError(f"expected a (T, {VECTOR_DIM}) motion vector, got shape {vec.shape}")
    pitch, yaw, roll = vec[:, 67], vec[:, 68], vec[:, 69]
    return {
        "exp": vec[:, EXP_DIMS].reshape(-1, 21, 3).copy(),
        "scale": vec[:, SCALE_DIMS].copy(),
        "t": vec[:, T_DIMS].copy(),
        "pitch": pitch.copy(), "yaw": yaw.copy(), "roll": roll.copy(),
        "R": rotation_matrix(pitch, yaw, roll),
    }
