"""Numbers that judge generated motion against real motion, without rendering a frame.

All functions take 70-dim sequences in raw units (expression and translation in LivePortrait's
keypoint units, scale unitless, angles in degrees), shaped (T, 70), at 25 fps.

Groups:

* ``expression``: the 63 expression dims;
* ``lip``: the expression rows of LivePortrait's lip keypoints (``LIP_KEYPOINTS``: rows 6, 12, 14,
  17, 19, 20, the rows its ``animation_region="lip"`` animates), 18 dims;
* ``pose``: scale, translation and pitch/yaw/roll together (7 dims; degrees dominate), and its parts
  ``angles`` (degrees), ``translation`` and ``scale`` reported on their own.

Distances are per-frame Euclidean norms over a group's dims, averaged over frames. Motion dynamics
are summarised by the mean absolute first, second and third differences per frame (velocity,
acceleration, jerk); jerk is the smoothness score (lower is smoother), compared with the real one.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from shards.vector import (
    ANGLE_DIMS,
    EXP_DIMS,
    POSE_DIMS,
    SCALE_DIMS,
    T_DIMS,
    VECTOR_DIM,
)
from training.template import LIP_KEYPOINTS

LIP_DIMS = np.array([3 * row + axis for row in LIP_KEYPOINTS for axis in range(3)])

GROUPS: dict[str, np.ndarray] = {
    "expression": np.arange(VECTOR_DIM)[EXP_DIMS],
    "lip": LIP_DIMS,
    "pose": np.arange(VECTOR_DIM)[POSE_DIMS],
    "angles": np.arange(VECTOR_DIM)[ANGLE_DIMS],
    "translation": np.arange(VECTOR_DIM)[T_DIMS],
    "scale": np.arange(VECTOR_DIM)[SCALE_DIMS],
}


def _check(seq: np.ndarray) -> np.ndarray:
    seq = np.asarray(seq, dtype=np.float64)
    if seq.ndim != 2 or seq.shape[1] != VECTOR_DIM:
        raise ValueError(f"expected a (T, {VECTOR_DIM}) motion sequence, got {seq.shape}")
    return seq


# Frames of the Gaussian that splits motion into slow and fast parts: a blink (about 5 frames) and
# frame-to-frame jitter fall in the fast part, head turns and speech-envelope mouth motion in the slow.
BAND_SIGMA = 6.0


def band_std(seq: np.ndarray, sigma: float = BAND_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim temporal std of the slow part (Gaussian-smoothed over ``sigma`` frames) and of the
    fast part (the rest), each (70,).

    Total std alone cannot tell motion that moves like the real one from motion that is too still
    and jittery at once: both can match it. Generated motion that flickers shows a fast part several
    times the real one's; motion that is oversmoothed, a fast part well under it.
    """
    seq = _check(seq)
    slow = gaussian_filter1d(seq, sigma, axis=0, mode="nearest")
    return slow.std(0), (seq - slow).std(0)


def group_l2(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Mean per-frame L2 distance per group between two aligned sequences of equal length."""
    gen, ref = _check(generated), _check(real)
    if gen.shape != ref.shape:
        raise ValueError(f"sequences differ in shape: {gen.shape} vs {ref.shape}")
    return {name: float(np.linalg.norm(gen[:, dims] - ref[:, dims], axis=1).mean())
            for name, dims in GROUPS.items()}


def derivative_magnitudes(seq: np.ndarray, order: int) -> dict[str, np.ndarray]:
    """Per-frame L2 norm of the ``order``-th difference, per group (units per frame^order)."""
    diff = np.diff(_check(seq), n=order, axis=0)
    return {name: np.linalg.norm(diff[:, dims], axis=1) for name, dims in GROUPS.items()}


def dynamics(seq: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and 95th percentile of velocity, acceleration and jerk norms, per group.

    A sequence too short for a difference order gets NaN for it.
    """
    out: dict[str, dict[str, float]] = {}
    for order, label in ((1, "velocity"), (2, "acceleration"), (3, "jerk")):
        for name, mags in derivative_magnitudes(seq, order).items():
            entry = out.setdefault(name, {})
            entry[f"{label}_mean"] = float(mags.mean()) if mags.size else float("nan")
            entry[f"{label}_p95"] = float(np.percentile(mags, 95)) if mags.size else float("nan")
    return out


def diversity(samples: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean pairwise per-frame L2 between sequences generated from the same audio (other seeds)."""
    seqs = [_check(s) for s in samples]
    if len(seqs) < 2:
        return {name: float("nan") for name in GROUPS}
    pairs = list(itertools.combinations(seqs, 2))
    return {name: float(np.mean([np.linalg.norm(a[:, dims] - b[:, dims], axis=1).mean()
                                 for a, b in pairs]))
            for name, dims in GROUPS.items()}


def boundary_jumps(seq: np.ndarray, joins: Sequence[int], dims: np.ndarray | slice = slice(None)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Velocity norms at the joins between windows (frames ``i`` of ``joins``: the step i -> i + 1,
    as :func:`training.diffusion.window_joins` lists them) and everywhere else.

    A sliding-window generator that stitches well shows join velocities inside the range of its
    interior ones.
    """
    vel = np.linalg.norm(np.diff(_check(seq)[:, dims], axis=0), axis=1)
    at_boundary = np.zeros(len(vel), dtype=bool)
    at_boundary[[j for j in joins if 0 <= j < len(vel)]] = True
    return vel[at_boundary], vel[~at_boundary]


