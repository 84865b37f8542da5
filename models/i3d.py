"""FVD's video network: the Kinetics-400 I3D of TF-Hub as StyleGAN-V's TorchScript port.

``i3d_torchscript.pt`` (StyleGAN-V, also used by common_metrics_on_video_quality and most FVD code)
takes (B, 3, T, 224, 224) videos in [-1, 1] and, called with ``rescale=False, resize=False,
return_features=True``, returns the 400-d logits before the softmax: the features FVD compares.
The file holds its own architecture, so there is no random version of it; ``"random"`` builds a
small random 3-D convolution with the same input and output contract, for tests and smoke runs only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.weights import RANDOM, warn_random, weight_id

FEATURE_DIM = 400
INPUT_SIZE = 224


class I3dFeatures(nn.Module):
    """``forward(videos)`` -> (B, 400) features of (B, 3, T, 224, 224) videos in [-1, 1]."""

    def __init__(self, detector: nn.Module, variant: str, weight: str):
        super().__init__()
        self.detector = detector
        self.variant = variant
        self.weight_id = weight

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if self.weight_id == RANDOM:
            return self.detector(videos)
        return self.detector(videos, rescale=False, resize=False, return_features=True)


class RandomVideoFeatures(nn.Module):
    """Not I3D: a random stand-in with I3D's input and output shapes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv3d(3, 32, kernel_size=(3, 7, 7), stride=(1, 4, 4), padding=(1, 3, 3))
        self.head = nn.Linear(32, FEATURE_DIM)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(videos)).mean(dim=(2, 3, 4)))


def load_i3d(weights: str | Path, device: str | torch.device = "cpu") -> I3dFeatures:
    """The TorchScript I3D from ``i3d_torchscript.pt``, or the random stand-in for ``"random"``."""
    if str(weights) == RANDOM:
        warn_random("FVD's I3D (a random 3-D conv stand-in, not I3D)")
        return I3dFeatures(RandomVideoFeatures(), "random stand-in (not I3D)", RANDOM).to(device).eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"I3D TorchScript file not found: {path}")
    detector = torch.jit.load(str(path), map_location=device).eval()
    return I3dFeatures(detector, "StyleGAN-V i3d_torchscript.pt (TF-Hub Kinetics-400 I3D), 400-d logits",
                       weight_id(path)).to(device).eval()
