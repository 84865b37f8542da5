"""Normalisation of the 70-dim motion vector and the audio features, from the pipeline's stats file.

Expression dims (the first 63) are z-scored. Pose dims (scale, t, pitch/yaw/roll) are either
z-scored like the expression (``pose="zscore"``: training's default, ``data.pose_norm`` in
configs/train.yaml), so pose moves on the same scale as the diffusion noise, or min-max scaled to
[-1, 1] by the statistics' range (``pose="minmax"``, JoyVASA's convention, REFERENCE §3). The range
leaves out each clip's few most extreme frames (``shards.stats``), so a normalised pose may fall
slightly outside [-1, 1]. The class defaults to min-max because checkpoints written before the
choice existed used it (``training.checkpoint.pose_norm``); every caller that trains or samples
passes the run's choice. Audio features are z-scored when the stats carry them. The stats come
from the training split only, are saved in every checkpoint and must be the same at inference.
Works on numpy arrays and torch tensors alike (last axis = feature).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from shards import storage
from shards.vector import EXP_DIMS, POSE_DIMS, VECTOR_DIM

Array = TypeVar("Array", np.ndarray, torch.Tensor)

STD_FLOOR = 1e-5     # a dimension that never moves is left near its mean, not blown up
RANGE_FLOOR = 1e-5


class StatsError(ValueError):
    """A missing, malformed or incompatible statistics file."""


def load_stats(path: str | Path) -> dict[str, Any]:
    """The statistics file at ``path`` (a path or an object-store URI), validated."""
    path = str(path)
    if not storage.is_file(path):
        raise StatsError(f"normalisation statistics not found: {path} (the pipeline writes "
                         "OUT/stats.json from the training split; pass data.stats=PATH to use another)")
    try:
        stats = json.loads(storage.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StatsError(f"statistics file {path} is not valid JSON: {exc}") from exc
    Normalizer(stats)  # validates
    return stats


POSE_NORMS = ("minmax", "zscore")


class Normalizer:
    def __init__(self, stats: dict[str, Any], pose: str = "minmax"):
        if pose not in POSE_NORMS:
            raise StatsError(f"pose normalisation must be one of {POSE_NORMS}, got {pose!r}")
        vector = stats.get("vector")
        if not isinstance(vector, dict) or any(k not in vector for k in ("mean", "std", "min", "max")):
            raise StatsError("stats must hold vector.mean/std/min/max")
        arrays = {k: np.asarray(vector[k], dtype=np.float32) for k in ("mean", "std", "min", "max")}
        if any(a.shape != (VECTOR_DIM,) for a in arrays.values()):
            raise StatsError(f"vector stats must have {VECTOR_DIM} entries each, got "
                             f"{ {k: a.shape for k, a in arrays.items()} }")
        self.stats = stats
        self.shift = np.zeros(VECTOR_DIM, np.float32)
        self.scale = np.ones(VECTOR_DIM, np.float32)
        self.shift[EXP_DIMS] = arrays["mean"][EXP_DIMS]
        self.scale[EXP_DIMS] = np.maximum(arrays["std"][EXP_DIMS], STD_FLOOR)
        if pose == "zscore":
            self.shift[POSE_DIMS] = arrays["mean"][POSE_DIMS]
            self.scale[POSE_DIMS] = np.maximum(arrays["std"][POSE_DIMS], STD_FLOOR)
        else:
            self.shift[POSE_DIMS] = (arrays["max"][POSE_DIMS] + arrays["min"][POSE_DIMS]) / 2
            self.scale[POSE_DIMS] = np.maximum((arrays["max"][POSE_DIMS] - arrays["min"][POSE_DIMS]) / 2,
                                               RANGE_FLOOR)
        audio = stats.get("audio_feat")
        self.audio_dim: int | None = None
        if audio:
            self.audio_mean = np.asarray(audio["mean"], dtype=np.float32)
            self.audio_std = np.maximum(np.asarray(audio["std"], dtype=np.float32), STD_FLOOR)
            self.audio_dim = int(audio.get("dim", self.audio_mean.shape[0]))
            if self.audio_mean.shape != (self.audio_dim,) or self.audio_std.shape != (self.audio_dim,):
                raise StatsError(f"audio_feat stats must have dim={self.audio_dim} entries")

    @staticmethod
    def _apply(x: Array, shift: np.ndarray, scale: np.ndarray, inverse: bool) -> Array:
        if isinstance(x, torch.Tensor):
            shift_t = torch.as_tensor(shift, device=x.device, dtype=x.dtype)
            scale_t = torch.as_tensor(scale, device=x.device, dtype=x.dtype)
            return x * scale_t + shift_t if inverse else (x - shift_t) / scale_t
        x = np.asarray(x, dtype=np.float32)
        return x * scale + shift if inverse else (x - shift) / scale

    def normalize(self, vec: Array) -> Array:
        """Motion vectors (..., 70) in raw units -> normalised."""
        return self._apply(vec, self.shift, self.scale, inverse=False)

    def denormalize(self, vec: Array) -> Array:
        """Normalised motion (..., 70) -> raw units (degrees for the angles)."""
        return self._apply(vec, self.shift, self.scale, inverse=True)

    def normalize_audio(self, feat: Array) -> Array:
        """Audio features (..., D) -> z-scored; unchanged when the stats have no audio entries."""
        if self.audio_dim is None:
            return feat
        return self._apply(feat, self.audio_mean, self.audio_std, inverse=False)
