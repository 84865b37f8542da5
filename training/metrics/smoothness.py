"""Temporal smoothness as VBench's ``motion_smoothness`` computes it.

The even frames (0, 2, 4, ...) go to a frame interpolator (AMT-S in VBench; ``models.amt``, loaded
by ``training.benchmark.load_interpolator``) at t = 1/2 between each pair of neighbours; the
predicted middles are compared with the real odd frames:
score = (255 - mean absolute difference) / 255, 1.0 for motion that is exactly interpolable.

VBench's steps kept here: frames as float tensors in 0..1, replicate-padded to a multiple of 16
(its ``InputPadder``), predictions cut back and turned into uint8 by ``x * 255`` clipped and
truncated (``astype``), per-frame ``cv2.absdiff`` means averaged over the odd frames that have a
prediction. VBench scales large frames down on GPUs with little memory; here frames run at full size.
AMT-S computes frames of at least 128 px a side (after padding); smaller ones raise (the official
network returns NaN there).
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PAD_MULTIPLE = 16
# (frame0, frame1) (1, 3, H, W) float in 0..1 -> the frame halfway between them, same shape.
Interpolator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pad_amounts(height: int, width: int, multiple: int = PAD_MULTIPLE) -> list[int]:
    """Left, right, top, bottom padding to the next multiple (VBench's InputPadder)."""
    pad_h = (((height // multiple) + 1) * multiple - height) % multiple
    pad_w = (((width // multiple) + 1) * multiple - width) % multiple
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0


def to_image(x: torch.Tensor) -> np.ndarray:
    """VBench's tensor2img: x * 255, clipped, truncated to uint8."""
    return (x * 255.0).squeeze(0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)


@torch.inference_mode()
def motion_smoothness(frames: np.ndarray, interpolate: Interpolator, device: str | torch.device = "cpu") -> float:
    """VBench's score of (T >= 3, H, W, 3) uint8 RGB frames with ``interpolate`` as the interpolator."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 3:
        raise ValueError(f"need (T >= 3, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    pad = pad_amounts(height, width)
    even = [F.pad(to_tensor(f).to(device), pad, mode="replicate") for f in frames[0::2]]
    diffs = []
    for i, (a, b) in enumerate(zip(even[:-1], even[1:])):
        middle = interpolate(a, b)[..., pad[2]:pad[2] + height, pad[0]:pad[0] + width]
        diffs.append(float(np.mean(cv2.absdiff(frames[2 * i + 1], to_image(middle)))))
    return (255.0 - float(np.mean(diffs))) / 255.0
