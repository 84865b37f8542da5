"""Pixel-space geometry shared by AMT's blocks: resizing, backward warping, and the bidirectional
all-pairs correlation pyramid looked up around flow-displaced points.

Every function keeps the official convention it replaces (``networks/blocks/raft.py``,
``networks/blocks/ifrnet.py`` and ``utils/flow_utils.py`` of MCG-NKU/AMT), because the checkpoint's
weights were trained against exactly these samplings: corner-aligned grids, border padding for image
warps and zero padding for correlation lookups, and RAFT's order of the lookup window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear rescaling by ``scale`` with half-pixel centres: how every AMT block changes resolution."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def pixel_grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(B, 2, H, W) float pixel coordinates: x (column) in channel 0, y (row) in channel 1."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys)).float()[None].repeat(batch, 1, 1, 1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` sampled at every pixel moved by ``flow`` (B, 2, H, W, in pixels, x then y).

    Bilinear, corner-aligned, border values outside the frame (``flow_utils.warp``).
    """
    _, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width).to(image).view(1, 1, width)
    ys = torch.linspace(-1.0, 1.0, height).to(image).view(1, height, 1)
    grid = torch.stack((xs + flow[:, 0] / ((width - 1.0) / 2.0), ys + flow[:, 1] / ((height - 1.0) / 2.0)), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def sample_at_pixels(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` (N, C, H, W) at pixel ``points`` (N, h, w, 2; x, y), zero outside."""
    height, width = maps.shape[-2:]
    x, y = points.split(1, dim=-1)
    grid = torch.cat((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), dim=-1)
    return F.grid_sample(maps, grid, align_corners=True)


class CorrelationPyramid:
    """Scaled dot products between every position of frame 0's features and every position of frame 1's,
    kept both ways (0 -> 1 and 1 -> 0) and average-pooled into ``levels`` coarser copies.

    Built once per frame pair and looked up at every refinement stage; it holds no weights. A lookup
    returns, per level, the (2r+1)^2 correlations in a window around the given points, as
    ``levels * (2r+1)^2`` channels (level 0 first) that the update blocks' ``convc1`` reads.
    """

    def __init__(self, features0: torch.Tensor, features1: torch.Tensor, levels: int, radius: int):
        self.radius = radius
        batch, dim, height, width = features0.shape
        scores = torch.matmul(features0.view(batch, dim, -1).transpose(1, 2), features1.view(batch, dim, -1))
        scores = scores / torch.sqrt(torch.tensor(dim).float())  # (B, HW of frame 0, HW of frame 1)
        forward = scores.reshape(batch * height * width, 1, height, width)
        backward = scores.transpose(1, 2).reshape(batch * height * width, 1, height, width)
        self.forward_levels, self.backward_levels = [forward], [backward]
        for _ in range(levels - 1):
            forward, backward = F.avg_pool2d(forward, 2, stride=2), F.avg_pool2d(backward, 2, stride=2)
            self.forward_levels.append(forward)
            self.backward_levels.append(backward)

    def __call__(self, points0: torch.Tensor, points1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of the 0 -> 1 correlations at ``points0`` and of the 1 -> 0 ones at ``points1``
        ((B, 2, h, w) pixel coordinates at the features' resolution), each (B, levels*(2r+1)^2, h, w)."""
        return self._lookup(self.forward_levels, points0), self._lookup(self.backward_levels, points1)

    def _lookup(self, levels: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = points.shape
        r = self.radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=points.device)
        # RAFT's window order, which the checkpoint's convc1 channels follow: the first window axis
        # shifts x and the second shifts y (offsets[i, j] = (steps[i], steps[j]) added to (x, y)).
        offsets = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        centres = points.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        windows = [sample_at_pixels(level, centres / 2 ** i + offsets).view(batch, height, width, -1)
                   for i, level in enumerate(levels)]
        return torch.cat(windows, dim=-1).permute(0, 3, 1, 2).contiguous().float()
