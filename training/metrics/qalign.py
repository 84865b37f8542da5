"""Q-Align's quality score and the paper's 0..100 scale; the IQA and VQA columns.

Q-Align asks its model "How would you rate the quality of this image?" and reads the logits of the
five level words; its own scorer weights their softmax by [1, .75, .5, .25, 0] (0..1). pyiqa's
``qalign`` weights the same softmax by [5, 4, 3, 2, 1] (1..5), so ``(pyiqa - 1) / 4`` is Q-Align's
own number, and the paper's IQA/VQA (68.97, 72.42...) read as that times 100.

VQA: Q-Align's video scorer puts the frames sampled at 1 fps into one multi-image prompt ("How would
you rate the quality of this video?"). pyiqa's ``qalign`` metric takes one image, but the Q-Align
model it loads has that scorer, and ``models.quality.IqaModel.video_score`` calls it. Without
Q-Align's weights (or with ``--random-weights``) another pyiqa metric (``piqe``) fills both
columns, on its own scale, VQA then being the mean of its 1 fps frame scores, labelled as such in
every output.
"""
from __future__ import annotations

import numpy as np

from shards.format import FPS

LEVELS = ("excellent", "good", "fair", "poor", "bad")
QALIGN_WEIGHTS = np.array([1.0, 0.75, 0.5, 0.25, 0.0])   # Q-Align's own scorer, 0..1
PYIQA_WEIGHTS = np.array([5.0, 4.0, 3.0, 2.0, 1.0])      # pyiqa's qalign, 1..5
PAPER_SCALE = 100.0
QALIGN_METRICS = ("qalign", "qalign_4bit", "qalign_8bit")
VQA_FPS = 1


def level_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the five level logits (..., 5), excellent first."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[-1] != len(LEVELS):
        raise ValueError(f"need logits of the {len(LEVELS)} levels {LEVELS}, got shape {logits.shape}")
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def qalign_score(logits: np.ndarray) -> np.ndarray:
    """Q-Align's own 0..1 score of level logits (..., 5)."""
    return level_probabilities(logits) @ QALIGN_WEIGHTS


def pyiqa_to_paper(score: float | np.ndarray) -> float | np.ndarray:
    """pyiqa's 1..5 Q-Align score -> the paper's 0..100 scale."""
    return (np.asarray(score, dtype=np.float64) - 1.0) / 4.0 * PAPER_SCALE


def one_fps_indices(n_frames: int, fps: int = FPS, rate: int = VQA_FPS) -> np.ndarray:
    """Frames sampled at ``rate`` per second: 0, fps/rate, 2 fps/rate, ... (at least frame 0)."""
    return np.arange(0, max(n_frames, 1), fps // rate)


def quality_scores(model, frames: np.ndarray, iqa_stride: int = 1) -> dict[str, float]:
    """IQA (mean over every ``iqa_stride``-th frame) and VQA (mean over the 1 fps frames) of one
    video, on the paper's scale for Q-Align and on the metric's own scale otherwise."""
    iqa_idx = np.arange(0, len(frames), max(1, iqa_stride))
    vqa_idx = one_fps_indices(len(frames))
    if model.scores_videos:  # Q-Align: the 1 fps frames as one video prompt
        iqa = float(np.mean(model.frame_scores(frames[iqa_idx])))
        vqa = model.video_score(frames[vqa_idx])
    else:
        wanted = np.union1d(iqa_idx, vqa_idx)
        scores = dict(zip(wanted.tolist(), model.frame_scores(frames[wanted]).tolist()))
        iqa = float(np.mean([scores[i] for i in iqa_idx]))
        vqa = float(np.mean([scores[i] for i in vqa_idx]))
    if model.metric_name in QALIGN_METRICS:
        iqa, vqa = float(pyiqa_to_paper(iqa)), float(pyiqa_to_paper(vqa))
    return {"iqa": iqa, "vqa": vqa, "iqa_frames": len(iqa_idx), "vqa_frames": len(vqa_idx)}


def describe(metric: str, lower_better: bool) -> str:
    """What the IQA/VQA numbers are, for the results."""
    if metric in QALIGN_METRICS:
        return (f"Q-Align through pyiqa {metric!r}: (score - 1) / 4 x 100, Q-Align's own 0..1 weighting x 100; "
                f"VQA = Q-Align's video scorer on the frames at {VQA_FPS} fps as one multi-image prompt, same scale")
    return (f"STAND-IN, NOT Q-ALIGN: pyiqa {metric!r} on its own scale ({'lower' if lower_better else 'higher'} "
            f"is better), not comparable with the paper's IQA/VQA; VQA = mean over frames at {VQA_FPS} fps")
