"""Normalisation statistics of the training split, streamed from the shards (bounded memory).

Reads every kept training clip back through ``shards.reader`` and turns its raw motion into the
70-dim vector with ``shards.vector.motion_to_vector``, so the statistics describe exactly what
the trainer will read. Per dimension: mean, std (population), min and max, merged clip by clip
with Chan's parallel update in float64; audio features likewise (mean and std).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pipeline.outdir import SHARDS, OutputDir
from pipeline.split import TRAIN
from shards.reader import iter_samples
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


def compute_stats(out: OutputDir, shard_names: Iterable[str]) -> dict[str, Any]:
    """Statistics over every training-split sample of the named shards."""
    vector, feat, kp = RunningMoments(), RunningMoments(), RunningMoments()
    n_clips = 0
    for name in sorted(set(shard_names)):
        path = out.open_local(f"{SHARDS}/{name}")
        try:
            for sample in iter_samples(path):
                if sample["meta"].get("split") != TRAIN:
                    continue
                vector.update(motion_to_vector(sample["motion"]))
                feat.update(sample["audio_feat"].astype(np.float64))
                kp.update(sample["motion"]["kp"].reshape(-1, 63).astype(np.float64))
                n_clips += 1
        finally:
            if out.remote:
                path.unlink(missing_ok=True)
    return {
        "format_version": FORMAT_VERSION, "split": TRAIN, "n_frames": int(vector.n), "n_clips": n_clips,
        "vector": {"dim": VECTOR_DIM, "mean": _as_list(vector.mean),
                   "std": _as_list(vector.std if vector.n else None),
                   "min": _as_list(vector.min), "max": _as_list(vector.max)},
        "audio_feat": {"dim": 0 if feat.mean is None else int(len(feat.mean)), "mean": _as_list(feat.mean),
                       "std": _as_list(feat.std if feat.n else None)},
        # Mean canonical keypoints: the neutral face generated motion is drawn on (templates, previews).
        "kp": {"dim": 63, "mean": _as_list(kp.mean)},
    }
