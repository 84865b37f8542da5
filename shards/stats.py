"""Normalisation statistics (``stats.json``): the format and the moments they are merged from.

Statistics describe exactly what the trainer reads: the 70-dim vector of
``shards.vector.motion_to_vector`` per frame. Per dimension: mean, std (population), min and max,
merged clip by clip with Chan's parallel update in float64; audio features likewise (mean and std);
and the mean canonical keypoints. ``DatasetMoments`` accumulates them from samples and writes the
``stats.json`` document; moments of parts of a dataset merge into the moments of the whole.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from shards.split import TRAIN
from shards.vector import VECTOR_DIM, motion_to_vector

STATS_FILE = "stats.json"
FORMAT_VERSION = 1


class RunningMoments:
    """Count, mean, sum of squared deviations, min and max per column, updated batch by batch and
    mergeable across workers (Chan et al.'s parallel update, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or len(rows) == 0:
            return
        batch = RunningMoments()
        batch.n, batch.mean = len(rows), rows.mean(0)
        batch.m2 = ((rows - batch.mean) ** 2).sum(0)
        batch.min, batch.max = rows.min(0), rows.max(0)
        self.merge(batch)

    def merge(self, other: "RunningMoments") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = other.n, other.mean, other.m2, other.min, other.max
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)


def _as_list(values: np.ndarray | None) -> list[float]:
    return [] if values is None else [float(v) for v in values]


class DatasetMoments:
    """Moments of the training vectors, audio features and canonical keypoints of a set of clips."""

    def __init__(self) -> None:
        self.vector, self.audio_feat, self.kp = RunningMoments(), RunningMoments(), RunningMoments()
        self.n_clips = 0

    def add_sample(self, motion: dict[str, np.ndarray], audio_feat: np.ndarray) -> None:
        self.vector.update(motion_to_vector(motion))
        self.audio_feat.update(audio_feat.astype(np.float64))
        self.kp.update(motion["kp"].reshape(-1, 63).astype(np.float64))
        self.n_clips += 1

    def document(self) -> dict[str, Any]:
        """The ``stats.json`` document of the training split these moments describe."""
        vector, feat, kp = self.vector, self.audio_feat, self.kp
        return {
            "format_version": FORMAT_VERSION, "split": TRAIN, "n_frames": int(vector.n), "n_clips": self.n_clips,
            "vector": {"dim": VECTOR_DIM, "mean": _as_list(vector.mean),
                       "std": _as_list(vector.std if vector.n else None),
                       "min": _as_list(vector.min), "max": _as_list(vector.max)},
            "audio_feat": {"dim": 0 if feat.mean is None else int(len(feat.mean)), "mean": _as_list(feat.mean),
                           "std": _as_list(feat.std if feat.n else None)},
            # Mean canonical keypoints: the neutral face generated motion is drawn on (templates, previews).
            "kp": {"dim": 63, "mean": _as_list(kp.mean)},
        }
