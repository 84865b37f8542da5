"""Clip quality: a pyiqa no-reference metric (``models.quality``) on frames sampled through the clip.

Aggregates are literal: ``min`` is the numerically smallest frame score, which is the worst frame
only where higher is better (use ``max`` or ``p90`` for lower-is-better metrics such as PIQE).
"""
from __future__ import annotations

import numpy as np
import torch

from models.quality import IqaModel, MetricUnavailableError  # noqa: F401  (re-exported for callers)

AGGREGATES = {
    "mean": np.mean,
    "median": np.median,
    "min": np.min,
    "max": np.max,
    "p10": lambda s: np.percentile(s, 10),
    "p90": lambda s: np.percentile(s, 90),
}
def sample_indices(n_total: int, n_frames: int) -> np.ndarray:
    """``n_frames`` frame indices spread evenly over ``n_total`` (all of them when there are fewer)."""
    if n_total <= 0:
        raise ValueError("no frames to score")
    if n_total <= n_frames:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n_frames)).astype(np.int64))


class QualityScorer:
    """Score a clip: ``n_frames`` evenly sampled frames through a pyiqa metric, then ``aggregate``."""

    def __init__(self, metric: str = "qalign", n_frames: int = 8, aggregate: str = "mean",
                 device: str | torch.device | None = None, batch_size: int | None = None,
                 random_qalign: str | None = None, seed: int = 0):
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        self.n_frames = int(n_frames)
        self.aggregate = aggregate
        self.model = IqaModel(metric, device, batch_size=batch_size or self.n_frames,
                              random_qalign=random_qalign, seed=seed)
        self.metric_name, self.device = metric, self.model.device
        self.lower_better, self.score_range = self.model.lower_better, self.model.score_range
        self.weight_id = self.model.weight_id

    def score(self, frames: np.ndarray) -> tuple[float, np.ndarray]:
        """(clip score, per-frame scores of the sampled frames) for a clip's frames or face crops."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (N, H, W, 3) uint8 RGB, got shape {frames.shape}")
        per_frame = self.model.frame_scores(frames[sample_indices(len(frames), self.n_frames)])
        return float(AGGREGATES[self.aggregate](per_frame)), per_frame
