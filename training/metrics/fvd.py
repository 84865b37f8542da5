"""FVD: I3D features of fixed-length clips, generated against ground truth, Frechet distance.

Preprocessing as StyleGAN-V's FVD (and common_metrics_on_video_quality): frames in [0, 1], the
shorter side bilinearly resized to 224 (``align_corners=False``, the longer side rounded up), a
centre crop of 224x224, then [-1, 1]. Every video is cut into consecutive non-overlapping clips of
``clip_len`` frames (25: FVD-25); a video shorter than that gives one clip of all its frames and
the variant is named by the length actually used (``FVD-8``), never silently called FVD-25.
The distance needs at least two clips on each side (a covariance).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.i3d import INPUT_SIZE
from training.metrics.frechet import frechet_distance_of_features

CLIP_LEN = 25


def preprocess(frames: np.ndarray, resolution: int = INPUT_SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, 224, 224) float in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0  # C T H W
    _, _, h, w = video.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    h, w = video.shape[-2:]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return ((video[:, :, top:top + resolution, left:left + resolution] - 0.5) * 2).contiguous()


def clips_of(frames: np.ndarray, clip_len: int = CLIP_LEN) -> list[np.ndarray]:
    """Consecutive non-overlapping clips of ``clip_len`` frames; one shorter clip for a short video."""
    if len(frames) < clip_len:
        return [frames]
    return [frames[i:i + clip_len] for i in range(0, len(frames) - clip_len + 1, clip_len)]


@torch.inference_mode()
def video_features(i3d, videos: list[np.ndarray], clip_len: int = CLIP_LEN, batch_size: int = 4,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """(N clips, 400) I3D features of every ``clip_len``-frame clip of every video."""
    clips = [c[:clip_len] for v in videos for c in clips_of(v, clip_len)]
    batches = [torch.stack([preprocess(c) for c in clips[i:i + batch_size]])
               for i in range(0, len(clips), batch_size)]
    return np.concatenate([i3d(b.to(device)).float().cpu().numpy() for b in batches])


def fvd(i3d, generated: list[np.ndarray], real: list[np.ndarray], clip_len: int = CLIP_LEN,
        device: str | torch.device = "cpu") -> dict[str, object]:
    """FVD between two sets of videos, with the variant used and the clip counts. The clip length
    is ``clip_len``, or the shortest video's length when a video is shorter."""
    length = min([clip_len] + [len(v) for v in generated + real])
    gen = video_features(i3d, generated, length, device=device)
    ref = video_features(i3d, real, length, device=device)
    result: dict[str, object] = {"variant": f"FVD-{length}", "clip_len": length, "clips_generated": len(gen),
                                 "clips_real": len(ref), "value": None, "reason": None}
    if len(gen) < 2 or len(ref) < 2:
        result["reason"] = f"needs >= 2 clips of {length} frames per side, got {len(gen)} and {len(ref)}"
        return result
    result["value"] = frechet_distance_of_features(gen, ref)
    return result
