"""AMT-S's two image encoders: the correlation features (RAFT's small encoder) and the context pyramid.

The feature encoder's instance norms have no affine weights (``InstanceNorm2d`` defaults), so they
add no checkpoint keys; module names follow ``networks/blocks/feat_enc.py`` and
``networks/blocks/ifrnet.py`` so that ``amt-s.pth`` loads strictly.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_prelu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
               padding: int = 1) -> nn.Sequential:
    """Conv + per-channel PReLU (IFRNet's ``convrelu``): the unit of the pyramid and the decoders."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.PReLU(out_channels))


class Bottleneck(nn.Module):
    """1x1 squeeze to a quarter, 3x3 (strided), 1x1 expand, each instance-normalised and ReLU'd,
    added to the input (through a strided 1x1 projection where the resolution halves)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        mid = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1)
        self.norm1, self.norm2 = nn.InstanceNorm2d(mid), nn.InstanceNorm2d(mid)
        self.norm3 = nn.InstanceNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride), nn.InstanceNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        return self.relu((x if self.downsample is None else self.downsample(x)) + y)


class FeatureEncoder(nn.Module):
    """Frames -> ``out_dim`` features at 1/8 resolution for the correlation volume (RAFT's
    ``SmallEncoder`` with instance norms): 7x7 stride-2 stem, three pairs of bottlenecks (32, 64, 96
    channels; the last two pairs halve the resolution), a 1x1 projection."""

    def __init__(self, out_dim: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(32, 32), Bottleneck(32, 32))
        self.layer2 = nn.Sequential(Bottleneck(32, 64, stride=2), Bottleneck(64, 64))
        self.layer3 = nn.Sequential(Bottleneck(64, 96, stride=2), Bottleneck(96, 96))
        self.conv2 = nn.Conv2d(96, out_dim, kernel_size=1)
        for m in self.modules():  # the official initialisation; only random mode sees it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        """Both frames in one batch (instance norm keeps them independent), split again on return."""
        x = self.relu1(self.norm1(self.conv1(torch.cat(frames, dim=0))))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        return list(x.split([f.shape[0] for f in frames], dim=0))


class PyramidEncoder(nn.Module):
    """Frame -> context features at 1/2, 1/4, 1/8 and 1/16 resolution (``pyramid1`` .. ``pyramid4``):
    each level a stride-2 conv-PReLU and a conv-PReLU."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.levels = len(channels)
        previous = 3
        for level, ch in enumerate(channels, 1):
            self.add_module(f"pyramid{level}", nn.Sequential(conv_prelu(previous, ch, 3, 2, 1), conv_prelu(ch, ch)))
            previous = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{level}")(x)
            features.append(x)
        return features
