"""Driving keypoints for a source face from a motion sequence, composed as JoyVASA composes them.

A generated (or template) sequence says how a face moves; the source portrait says which face.
Every frame's driving keypoints are built *relative to the sequence's first frame*, so the source
keeps its own pose, expression and scale at frame 0 and then moves as the sequence moves
(``../shared/REFERENCE.md`` §11; JoyVASA's ``live_portrait_wmg_pipeline*.py``):

Human path (``animation_region="all"``)::

    R_i   = R_d,i R_d,0^T R_s
    exp_i = exp_s + (exp_d,i - exp_d,0), except the lip keypoints, which take exp_d,i itself
    s_i   = s_s * s_d,i / s_d,0
    t_i   = t_s + (t_d,i - t_d,0), tz = 0
    x_d,i = s_i (x_c,s R_i + exp_i) + t_i

then, with ``relative_volume`` (LivePortrait's expression-friendly relative mode),
``x_d,i = x_s + (x_d,i - x_d,0) * sqrt(vol(x_s)) / sqrt(vol(x_d,0))`` with the convex-hull volumes
of the keypoints, which rescales the sequence's motion to the source face's size. Stitching and
the driving multiplier come after (:func:`finish`). The animal path keeps the source's scale,
makes the expression fully relative and always applies the volume multiplier.

Everything here is a few floats per frame, so whole sequences are composed at once in numpy;
only the stitching network (applied by the caller) and the renderer run per batch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from shards.pose import logits_to_degrees, rotation_matrix
from shards.vector import ANGLE_DIMS, EXP_DIMS, SCALE_DIMS, T_DIMS

N_KEYPOINTS = 21
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)  # JoyVASA's human path takes these expressions absolute
REGIONS = ("all", "exp", "pose", "lip")


@dataclass(frozen=True)
class SourceMotion:
    """The source face as the motion extractor sees it: canonical keypoints, pose, expression."""

    kp_c: np.ndarray   # (21, 3) canonical keypoints
    R: np.ndarray      # (3, 3)
    exp: np.ndarray    # (21, 3)
    scale: float
    t: np.ndarray      # (3,), tz kept as extracted (dropped when keypoints are formed)

    @property
    def x_s(self) -> np.ndarray:
        """The source's own keypoints (21, 3): s (x_c R + exp) + t, tz dropped."""
        return keypoints(self.kp_c, self.R, self.exp, self.scale, self.t)


@dataclass(frozen=True)
class MotionSequence:
    """Per-frame motion of a driving sequence (T frames)."""

    R: np.ndarray      # (T, 3, 3)
    exp: np.ndarray    # (T, 21, 3)
    scale: np.ndarray  # (T,)
    t: np.ndarray      # (T, 3)

    def __len__(self) -> int:
        return len(self.scale)


def keypoints(kp_c: np.ndarray, R: np.ndarray, exp: np.ndarray, scale: np.ndarray | float,
              t: np.ndarray) -> np.ndarray:
    """``s (x_c R + exp) + t`` with tz dropped, broadcasting over leading frame axes."""
    scale = np.asarray(scale, dtype=np.float64)[..., None, None]
    x = scale * (np.asarray(kp_c, np.float64) @ R + exp)
    t = np.asarray(t, dtype=np.float64)
    return (x + np.concatenate([t[..., :2], np.zeros_like(t[..., 2:])], -1)[..., None, :]).astype(np.float32)


def source_motion(raw: dict[str, np.ndarray]) -> SourceMotion:
    """The motion extractor's raw outputs for one image (``kp``, ``exp`` (63,) or (21, 3), angle
    logits (66,), ``t`` (3,), ``scale`` (1,); a leading batch axis of 1 is allowed)."""
    def one(name: str, size: int) -> np.ndarray:
        value = np.asarray(raw[name], dtype=np.float64).reshape(-1)
        if value.size != size:
            raise ValueError(f"source motion {name!r} has {value.size} values, expected {size}")
        return value

    pitch, yaw, roll = (logits_to_degrees(one(k, 66)[None]) for k in ("pitch", "yaw", "roll"))
    R = np.asarray(rotation_matrix(pitch, yaw, roll), np.float64)[0]
    return SourceMotion(kp_c=one("kp", 63).reshape(N_KEYPOINTS, 3), R=R,
                        exp=one("exp", 63).reshape(N_KEYPOINTS, 3), scale=float(one("scale", 1)[0]),
                        t=one("t", 3))


def sequence_from_vector(vector: np.ndarray) -> MotionSequence:
    """A (T, 70) motion vector sequence (``shards.vector`` layout, raw units) -> MotionSequence."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 2 or vector.shape[1] != 70 or len(vector) == 0:
        raise ValueError(f"expected a non-empty (T, 70) motion sequence, got {vector.shape}")
    angles = vector[:, ANGLE_DIMS]
    R = np.asarray(rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2]), np.float64)
    return MotionSequence(R=R, exp=vector[:, EXP_DIMS].reshape(-1, N_KEYPOINTS, 3),
                          scale=vector[:, SCALE_DIMS][:, 0], t=vector[:, T_DIMS])


def volume_multiplier(x_s: np.ndarray, x_d0: np.ndarray) -> float:
    """sqrt(hull volume of the source keypoints) / sqrt(hull volume of the first driving frame's)."""
    return float(np.sqrt(ConvexHull(np.asarray(x_s, np.float64)).volume)
                 / np.sqrt(ConvexHull(np.asarray(x_d0, np.float64)).volume))


def compose_human(src: SourceMotion, seq: MotionSequence, region: str = "all",
                  relative_volume: bool = True) -> np.ndarray:
    """JoyVASA's human composition -> driving keypoints (T, 21, 3), before stitching."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    R0, exp0, s0, t0 = seq.R[0], seq.exp[0], seq.scale[0], seq.t[0]
    if region in ("all", "pose"):
        R = seq.R @ R0.T @ src.R
    else:
        R = np.broadcast_to(src.R, seq.R.shape)
    exp = np.broadcast_to(src.exp, seq.exp.shape).copy()
    relative = src.exp + (seq.exp - exp0)
    lips = list(LIP_KEYPOINTS)
    if region in ("all", "exp"):
        exp = relative
        exp[:, lips] = seq.exp[:, lips]
    elif region == "lip":
        exp[:, lips] = relative[:, lips]
    scale = src.scale * seq.scale / s0
    t = src.t + (seq.t - t0)
    x_d = keypoints(src.kp_c, R, exp, scale, t)
    if relative_volume:
        x_s = src.x_s
        x_d = (x_s + (x_d - x_d[0]) * volume_multiplier(x_s, x_d[0])).astype(np.float32)
    return x_d


def compose_animal(src: SourceMotion, seq: MotionSequence) -> np.ndarray:
    """JoyVASA's animal composition -> driving keypoints (T, 21, 3), before stitching."""
    R = seq.R @ seq.R[0].T @ src.R
    exp = src.exp + (seq.exp - seq.exp[0])
    t = src.t + (seq.t - seq.t[0])
    x_d = keypoints(src.kp_c, R, exp, np.full(len(seq), src.scale), t)
    x_s = src.x_s
    return (x_s + (x_d - x_d[0]) * volume_multiplier(x_s, x_d[0])).astype(np.float32)


def finish(x_s: np.ndarray, x_d: np.ndarray, stitch: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
           driving_multiplier: float = 1.0) -> np.ndarray:
    """Stitching (``stitch(x_s, x_d) -> x_d'``, batched over frames), then the driving multiplier:
    ``x_s + (x_d - x_s) * driving_multiplier``, as JoyVASA ends every frame."""
    x_d = np.asarray(x_d, np.float32)
    if stitch is not None:
        x_d = np.asarray(stitch(np.broadcast_to(x_s, x_d.shape), x_d), np.float32)
    return (x_s + (x_d - x_s) * np.float32(driving_multiplier)).astype(np.float32)
