"""LivePortrait's warping network W: warp the source feature volume from x_s to x_d.

The dense-motion network turns the 21 source and driving keypoints into one deformation field:
each keypoint k proposes the motion ``grid - x_d[k] + x_s[k]`` (plus the identity for the
background), the compressed source volume is warped by each proposal (5-D ``grid_sample``), and a
3D hourglass over those warped volumes and the keypoint heatmaps predicts soft weights (a softmax
over the 22 proposals) and an occlusion map. The weighted proposals form the deformation; the
source volume warped by it is flattened to (B, 512, 64, 64), mixed by two convs and multiplied by
the occlusion map. Names follow the official modules so ``warping_module.pth`` loads strictly
(``shared/reference/liveportrait_warping_module.keys.json``).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.liveportrait.blocks import (
    DownBlock3d,
    SameBlock2d,
    UpBlock3d,
    kp2gaussian,
    load_network,
    make_coordinate_grid,
)

REGISTRY_NAME = "liveportrait_warping_module"
KP_VARIANCE = 0.01  # of the keypoint heatmaps, in the [-1, 1] grid's units


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` 3D down blocks; keeps every scale for the skips."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        widths = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: up blocks, each output concatenated with the encoder's skip of its scale,
    then a 3x3x3 conv + BatchNorm + ReLU over (block_expansion + in_features) channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            width_in = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(width_in, min(max_features, block_expansion * 2 ** i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """Keypoints -> deformation (B, D, H, W, 3), occlusion map (B, 1, H, W) and the softmax
    weights of the 22 motion proposals (``mask``, B, 22, D, H, W)."""

    def __init__(self, block_expansion: int = 32, num_blocks: int = 5, max_features: int = 1024,
                 num_kp: int = 21, feature_channel: int = 32, reshape_depth: int = 16, compress: int = 4,
                 estimate_occlusion_map: bool = True):
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress)
        self.flag_estimate_occlusion_map = estimate_occlusion_map
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
                          if estimate_occlusion_map else None)

    def sparse_motions(self, spatial: tuple[int, int, int], kp_driving: torch.Tensor,
                       kp_source: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D, H, W, 3): the identity, then per keypoint ``grid - kp_driving + kp_source``
        (a pure translation per keypoint: LivePortrait uses no first-order Jacobians)."""
        b = kp_source.shape[0]
        grid = make_coordinate_grid(spatial, kp_source)[None, None]             # (1, 1, D, H, W, 3)
        shifted = grid - kp_driving[:, :, None, None, None, :]
        shifted = shifted + kp_source[:, :, None, None, None, :]                 # (B, K, D, H, W, 3)
        return torch.cat([grid.expand(b, 1, *grid.shape[2:]), shifted], dim=1)

    def deformed_features(self, feature: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """The compressed volume warped by each proposal: (B, 1 + K, C, D, H, W)."""
        b, c, d, h, w = feature.shape
        n = motions.shape[1]
        repeated = feature.unsqueeze(1).expand(b, n, c, d, h, w).reshape(b * n, c, d, h, w)
        warped = F.grid_sample(repeated, motions.reshape(b * n, d, h, w, 3), align_corners=False)
        return warped.view(b, n, c, d, h, w)

    def heatmaps(self, spatial: tuple[int, int, int], kp_driving: torch.Tensor,
                 kp_source: torch.Tensor) -> torch.Tensor:
        """Driving minus source Gaussian heatmaps, a zero map first for the background: (B, 1 + K, 1, D, H, W)."""
        heat = kp2gaussian(kp_driving, spatial, KP_VARIANCE) - kp2gaussian(kp_source, spatial, KP_VARIANCE)
        zeros = heat.new_zeros(heat.shape[0], 1, *spatial)
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))                     # (B, 4, D, H, W)
        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)
        deformed = self.deformed_features(feature, motions)                    # (B, 22, 4, D, H, W)
        heat = self.heatmaps((d, h, w), kp_driving, kp_source)                 # (B, 22, 1, D, H, W)
        inp = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w)          # (B, 110, D, H, W)
        prediction = self.hourglass(inp)                                       # (B, 142, D, H, W)

        mask = F.softmax(self.mask(prediction), dim=1)                         # (B, 22, D, H, W)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)                # (B, D, H, W, 3)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    """W of the paper; defaults are ``warping_module_params`` of models.yaml."""

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2, reshape_channel: int = 32, estimate_occlusion_map: bool = True,
                 dense_motion_params: dict | None = None, flag_use_occlusion_map: bool = True):
        super().__init__()
        params = {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "reshape_depth": 16,
                  "compress": 4}
        params.update(dense_motion_params or {})
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, feature_channel=reshape_channel,
                                                       estimate_occlusion_map=estimate_occlusion_map, **params)
        width = block_expansion * 2 ** num_down_blocks
        self.third = SameBlock2d(max_features, width, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)
        self.flag_use_occlusion_map = flag_use_occlusion_map
        self.weight_id = "random"

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """``feature_3d`` (B, 32, 16, 64, 64) from F, keypoints (B, 21, 3) -> the official dict:
        ``occlusion_map`` (B, 1, 64, 64) or None, ``deformation`` (B, 16, 64, 64, 3), ``out`` (B, 256, 64, 64)."""
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        occlusion_map = dense.get("occlusion_map")
        deformation = dense["deformation"]
        warped = F.grid_sample(feature_3d, deformation, align_corners=False)  # (B, 32, 16, 64, 64)
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.view(b, c * d, h, w)))            # (B, 256, 64, 64)
        if self.flag_use_occlusion_map and occlusion_map is not None:
            out = out * occlusion_map
        return {"occlusion_map": occlusion_map, "deformation": deformation, "out": out}


def load_warping_network(weights: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None, seed: int = 0,
                         name: str = REGISTRY_NAME) -> WarpingNetwork:
    """W in eval mode from ``warping_module.pth`` (strict) or ``"random"`` (``name``: the registry
    entry announced for random weights; the animal model passes ``liveportrait_animals_warping_module``)."""
    return load_network(WarpingNetwork, weights, name=name, what="warping module",
                        device=device, dtype=dtype, seed=seed)
