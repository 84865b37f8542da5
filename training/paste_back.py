"""Paste a rendered 512x512 face crop back into the original portrait through the inverse crop.

As LivePortrait does: the crop's feathered mask is warped into the portrait once, then each
rendered crop is warped the same way and blended, ``out = portrait + mask * (warped - portrait)``.
Where the mask is zero the portrait's pixels come back unchanged, bit for bit, so the background
never moves. LivePortrait ships its mask as an image (``mask_template.png``, not in the weights
repository); the default here is drawn in code: a rounded square covering the crop but a margin of
``margin`` of its side, feathered over ``feather`` of it. ``--mask PNG`` takes LivePortrait's file.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CROP_SIZE = 512


def feathered_mask(size: int = CROP_SIZE, margin: float = 0.06, feather: float = 0.08) -> np.ndarray:
    """(size, size) float32 in [0, 1]: one in the middle, zero within ``margin`` of the edges, and a
    Gaussian ramp about ``feather`` of the side wide in between (which also rounds the corners)."""
    edge = int(round(size * (margin + feather / 2)))
    hard = np.zeros((size, size), np.float32)
    hard[edge:size - edge, edge:size - edge] = 1.0
    soft = cv2.GaussianBlur(hard, (0, 0), max(size * feather / 4, 1.0))
    zero = int(round(size * margin))
    soft[:zero], soft[size - zero:], soft[:, :zero], soft[:, size - zero:] = 0, 0, 0, 0
    soft[soft < 1.0 / 512] = 0.0  # exact zeros outside the face, so the background stays exact
    return np.clip(soft / soft.max(), 0.0, 1.0).astype(np.float32)


def load_mask(path: str | Path | None, size: int = CROP_SIZE) -> np.ndarray:
    """The crop mask: LivePortrait's ``mask_template.png`` (or any grey image) at ``size``, or the
    drawn default when ``path`` is None."""
    if path is None:
        return feathered_mask(size)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read the paste-back mask {path}")
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


class PasteBack:
    """Blends rendered crops into one portrait; the warped mask is computed once."""

    def __init__(self, portrait: np.ndarray, crop_to_original: np.ndarray, mask: np.ndarray | None = None):
        self.portrait = np.ascontiguousarray(portrait)
        self.height, self.width = portrait.shape[:2]
        self.matrix = np.asarray(crop_to_original, np.float64)[:2]
        mask = feathered_mask() if mask is None else mask
        warped = cv2.warpAffine(mask, self.matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.mask = np.clip(warped, 0.0, 1.0)[..., None]
        self.base = self.portrait.astype(np.float32)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(B, 512, 512, 3) uint8 rendered crops -> (B, H, W, 3) uint8 portraits."""
        out = np.empty((len(crops), self.height, self.width, 3), np.uint8)
        for i, crop in enumerate(crops):
            warped = cv2.warpAffine(crop, self.matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
            blended = self.base + self.mask * (warped - self.base)
            out[i] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out
