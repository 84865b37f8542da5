"""LivePortrait's appearance feature extractor F: source crop -> 3D appearance feature volume.

Run once per source image. A 2D encoder (3x3 conv block, two downsampling blocks, 1x1 conv to 512
channels at 64x64) is reshaped into a volume of 32 channels x depth 16, refined by six 3D residual
blocks. Submodule names follow the official ones so ``appearance_feature_extractor.pth`` loads
strictly (keys pinned by ``shared/reference/liveportrait_appearance_feature_extractor.keys.json``).

Input (B, 3, 256, 256) RGB in [0, 1] (uint8 / 255, no mean/std); output (B, 32, 16, 64, 64).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from models.liveportrait.blocks import (
    DownBlock2d,
    ResBlock3d,
    SameBlock2d,
    load_network,
)

REGISTRY_NAME = "liveportrait_appearance_feature_extractor"


class AppearanceFeatureExtractor(nn.Module):
    """F of the paper; defaults are ``appearance_feature_extractor_params`` of models.yaml."""

    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16,
                 num_resblocks: int = 6):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError("reshape_channel * reshape_depth must equal max_features")
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        widths = [min(max_features, block_expansion * 2 ** i) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(a, b) for a, b in itertools.pairwise(widths))
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):  # the official names are "3dr0".."3dr5"
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))
        self.weight_id = "random"

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        out = self.first(source_image)          # (B, 64, 256, 256)
        for block in self.down_blocks:
            out = block(out)                    # (B, 128, 128, 128) -> (B, 256, 64, 64)
        out = self.second(out)                  # (B, 512, 64, 64)
        b, _, h, w = out.shape
        volume = out.view(b, self.reshape_channel, self.reshape_depth, h, w)
        return self.resblocks_3d(volume)        # (B, 32, 16, 64, 64)


def load_appearance_feature_extractor(weights: str | Path, device: str | torch.device = "cpu",
                                      dtype: torch.dtype | None = None, seed: int = 0,
                                      name: str = REGISTRY_NAME) -> AppearanceFeatureExtractor:
    """F in eval mode from ``appearance_feature_extractor.pth`` (strict) or ``"random"``.

    ``name`` is the registry entry announced for random weights (the animal model passes
    ``liveportrait_animals_appearance_feature_extractor``).
    """
    return load_network(AppearanceFeatureExtractor, weights, name=name, what="appearance feature extractor",
                        device=device, dtype=dtype, seed=seed)
