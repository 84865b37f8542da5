"""Building blocks shared by LivePortrait's renderer networks (F, W, G, S), and their loader.

The blocks are the conv + BatchNorm + activation units of LivePortrait's ``src/modules/util.py``,
named so that the official checkpoints' keys (``conv``, ``norm``, ``conv1``, ``norm1``, ...) land on
them; the coordinate grid and Gaussian heatmaps are the warping network's geometry. ``load_network``
is the one loading path every renderer file uses: random weights under a forked seed, or an official
state dict loaded strictly, with errors that name the file.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.state_dicts import load_strict, read_state_dict
from models.weights import RANDOM, warn_random, weight_id

# --- conv blocks (BatchNorm in eval mode: a per-channel affine from the checkpoint's statistics) ---

class SameBlock2d(nn.Module):
    """3x3 conv, BatchNorm, ReLU (or LeakyReLU with slope 0.01): resolution kept."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """3x3 conv, BatchNorm, ReLU, then 2x2 average pooling (halves H and W)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ResBlock3d(nn.Module):
    """Pre-activation 3D residual block: (BN, ReLU, 3x3x3 conv) twice, plus the input."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(out)))


class DownBlock3d(nn.Module):
    """3x3x3 conv, BatchNorm, ReLU, then average pooling over H and W only (depth kept)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest 2x upsampling of H and W (depth kept), then 3x3x3 conv, BatchNorm, ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


# --- geometry of the warping network ---

def make_coordinate_grid(spatial_size: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) grid of (x, y, z) in [-1, 1], corners at -1 and 1 (x right, y down, z in).

    LivePortrait's keypoints live in this frame; ``grid_sample`` reads it with align_corners=False,
    as the official code does (the slight mismatch is part of what the checkpoints were trained on).
    """
    d, h, w = spatial_size
    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, device=like.device).to(like.dtype) / (n - 1)) - 1
    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def kp2gaussian(kp: torch.Tensor, spatial_size: tuple[int, int, int], kp_variance: float) -> torch.Tensor:
    """Keypoints (B, K, 3) -> Gaussian bumps (B, K, D, H, W): exp(-|grid - kp|^2 / (2 variance))."""
    grid = make_coordinate_grid(spatial_size, kp)
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / kp_variance)


# --- random weights and strict loading ---

def settle_spectral_norm(model: nn.Module, iterations: int = 30) -> None:
    """Run power iterations on every spectrally normalised layer's ``weight_u``/``weight_v``.

    In eval mode the official spectral norm divides by ``u . (W v)`` with the stored vectors and
    never iterates; freshly initialised vectors are random, so that divisor can be near zero or
    negative and random-weight outputs blow up. Real checkpoints carry settled vectors.
    """
    for module in model.modules():
        if not hasattr(module, "weight_orig") or not hasattr(module, "weight_u"):
            continue
        with torch.no_grad():
            w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
            u, v = module.weight_u, module.weight_v
            for _ in range(iterations):
                v.copy_(F.normalize(w.t() @ u, dim=0, eps=1e-12))
                u.copy_(F.normalize(w @ v, dim=0, eps=1e-12))


def load_network(factory: Callable[[], nn.Module], weights: str | Path, *, name: str, what: str,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 seed: int = 0) -> nn.Module:
    """Build ``factory()`` from a plain state-dict file (strict) or ``"random"``.

    Random mode seeds a forked RNG (the caller's stays untouched), warns under the registry
    ``name`` and records ``weight_id == "random"``; a file records its sha256.
    The module comes back in eval mode with gradients off.
    """
    if str(weights) == RANDOM:
        warn_random(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
            settle_spectral_norm(model)
        model.weight_id = RANDOM
    else:
        state = read_state_dict(weights, f"LivePortrait {what}")
        model = factory()
        load_strict(model, state, weights, f"LivePortrait {what}")
        model.weight_id = weight_id(weights)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
