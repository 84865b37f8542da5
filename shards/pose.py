"""LivePortrait's head-pose and keypoint conventions, for torch tensors and numpy arrays alike.

The motion extractor predicts pitch, yaw and roll as logits over 66 bins of 3 degrees. The angle is
the softmax expectation of the bin index, times 3, minus 97.5. Rotations follow LivePortrait:
pitch about x, yaw about y, roll about z, ``R = (Rz @ Ry @ Rx)^T``, and keypoints are driven as
``x = scale * (x_c @ R + exp) + t`` with the z translation dropped.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")

N_BINS = 66
BIN_DEGREES = 3.0
OFFSET_DEGREES = 97.5


def is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch: the driver and the CPU workers use
    these functions on numpy arrays only and should not pay torch's import (over a CPU-second)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def logits_to_degrees(logits: Array) -> Array:
    """Pose logits (..., 66) -> degrees (...)."""
    if is_tensor(logits):
        import torch

        prob = torch.softmax(logits.float(), dim=-1)
        idx = torch.arange(N_BINS, dtype=prob.dtype, device=prob.device)
        return (prob * idx).sum(-1) * BIN_DEGREES - OFFSET_DEGREES
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    prob = np.exp(x)
    prob /= prob.sum(axis=-1, keepdims=True)
    deg = (prob * np.arange(N_BINS)).sum(-1) * BIN_DEGREES - OFFSET_DEGREES
    return deg.astype(np.float32)


def degrees_to_logits(degrees: np.ndarray, sigma_bins: float = 1.0) -> np.ndarray:
    """A logit vector (..., 66) whose softmax expectation is ``degrees``.

    Used where motion comes from somewhere other than the extractor (templates, generated
    sequences) but must be stored in the extractor's raw format: a Gaussian bump of width
    ``sigma_bins``, its centre moved by Newton steps until the expectation hits the target.
    """
    target = (np.asarray(degrees, dtype=np.float64) + OFFSET_DEGREES) / BIN_DEGREES
    idx = np.arange(N_BINS, dtype=np.float64)
    centre = target.copy()
    for _ in range(10):
        logits = -((idx - centre[..., None]) ** 2) / (2 * sigma_bins**2)
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        mean = (prob * idx).sum(-1)
        var = (prob * (idx - mean[..., None]) ** 2).sum(-1)
        centre = centre + (target - mean) / np.maximum(var / sigma_bins**2, 1e-3)
    return logits.astype(np.float32)


def rotation_matrix(pitch: Array, yaw: Array, roll: Array) -> Array:
    """Angles in degrees (...) -> rotation matrices (..., 3, 3), LivePortrait's convention."""
    if is_tensor(pitch):
        import torch

        x, y, z = (torch.deg2rad(a.float()) for a in (pitch, yaw, roll))
        cos, sin, stack = torch.cos, torch.sin, torch.stack
        one, zero = torch.ones_like(x), torch.zeros_like(x)
    else:
        x, y, z = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (pitch, yaw, roll))
        cos, sin, stack = np.cos, np.sin, np.stack
        one, zero = np.ones_like(x), np.zeros_like(x)

    def mat(rows):
        return stack([stack(r, -1) for r in rows], -2)

    rx = mat([[one, zero, zero], [zero, cos(x), -sin(x)], [zero, sin(x), cos(x)]])
    ry = mat([[cos(y), zero, sin(y)], [zero, one, zero], [-sin(y), zero, cos(y)]])
    rz = mat([[cos(z), -sin(z), zero], [sin(z), cos(z), zero], [zero, zero, one]])
    rot = rz @ ry @ rx
    if is_tensor(rot):
        return rot.transpose(-1, -2)
    return np.swapaxes(rot, -1, -2).astype(np.float32)


def matrix_to_degrees(rot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`rotation_matrix` (for |yaw| < 90): (..., 3, 3) -> pitch, yaw, roll."""
    m = np.swapaxes(np.asarray(rot, dtype=np.float64), -1, -2)  # back to Rz @ Ry @ Rx
    yaw = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    roll = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return tuple(np.rad2deg(a).astype(np.float32) for a in (pitch, yaw, roll))  # type: ignore[return-value]


def transform_keypoints(kp_c: Array, scale: Array, rot: Array, exp: Array, t: Array) -> Array:
    """Driven keypoints ``x = scale * (x_c @ R + exp) + t`` (tz dropped), shapes (..., 21, 3).

    ``kp_c`` and ``exp`` may be flat (..., 63); ``scale`` is (..., 1) and ``t`` is (..., 3).
    """
    kp_c = kp_c.reshape(*kp_c.shape[:-1], 21, 3) if kp_c.shape[-1] == 63 else kp_c
    exp = exp.reshape(*exp.shape[:-1], 21, 3) if exp.shape[-1] == 63 else exp
    x = (kp_c @ rot + exp) * scale[..., None]
    keep_xy = [1.0, 1.0, 0.0]
    if is_tensor(t):
        import torch

        return x + t[..., None, :] * torch.tensor(keep_xy, dtype=t.dtype, device=t.device)
    return x + t[..., None, :] * np.array(keep_xy, dtype=np.float32)
