"""LivePortrait's SPADE decoder G: warped feature (B, 256, 64, 64) -> RGB (B, 3, 512, 512) in [0, 1].

SPADE residual blocks (six at 64x64, one each at 128 and 256 after nearest 2x upsampling) are
modulated by the decoder's own input: each SPADE layer instance-normalises its input and scales and
shifts it by maps predicted from that input (resized, nearest). The residual convs carry spectral
norm (the old ``torch.nn.utils.spectral_norm`` hook, whose state-dict keys are ``weight_orig``,
``weight_u`` and ``weight_v``: exactly the official file's). A 3x3 conv to 12 channels and a pixel
shuffle make 512x512; a sigmoid maps to [0, 1]. Keys pinned by
``shared/reference/liveportrait_spade_generator.keys.json``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from models.liveportrait.blocks import load_network

REGISTRY_NAME = "liveportrait_spade_generator"
SPADE_HIDDEN = 128
LRELU_SLOPE = 0.2


class SPADE(nn.Module):
    """Instance norm (no affine), then ``x * (1 + gamma(seg)) + beta(seg)``."""

    def __init__(self, norm_nc: int, label_nc: int):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, SPADE_HIDDEN, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Two (SPADE, LeakyReLU 0.2, 3x3 conv) steps plus a shortcut, learned (SPADE, 1x1 conv, no
    activation) when the width changes; every conv spectrally normalised."""

    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, kernel_size=3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, kernel_size=3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, kernel_size=1, bias=False))
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def shortcut(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
        return self.shortcut(x, seg) + dx


class SPADEDecoder(nn.Module):
    """G of the paper; defaults are ``spade_generator_params`` of models.yaml (upscale 2: 256 -> 512)."""

    def __init__(self, upscale: int = 2, max_features: int = 512, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2):
        super().__init__()
        width = min(max_features, block_expansion * 2 ** num_down_blocks)  # 256: W's output width
        self.upscale = upscale
        self.fc = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        for i in range(6):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(2 * width, 2 * width, width))
        self.up_0 = SPADEResnetBlock(2 * width, width, width)
        self.up_1 = SPADEResnetBlock(width, out_channels, width)
        self.up = nn.Upsample(scale_factor=2)
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 2 * 2, kernel_size=3, padding=1),
                                          nn.PixelShuffle(upscale_factor=2))
        self.weight_id = "random"

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature                                    # (B, 256, 64, 64): modulates every block
        x = self.fc(feature)                             # (B, 512, 64, 64)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)                   # (B, 256, 128, 128)
        x = self.up_1(self.up(x), seg)                   # (B, 64, 256, 256)
        x = self.conv_img(F.leaky_relu(x, LRELU_SLOPE))  # (B, 3, 512, 512)
        return torch.sigmoid(x)


def load_spade_generator(weights: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None, seed: int = 0,
                         name: str = REGISTRY_NAME) -> SPADEDecoder:
    """G in eval mode from ``spade_generator.pth`` (strict) or ``"random"`` (spectral-norm vectors
    settled by power iteration so random outputs are finite; ``name``: the registry entry announced
    for random weights, ``liveportrait_animals_spade_generator`` for the animal model)."""
    return load_network(SPADEDecoder, weights, name=name, what="SPADE generator",
                        device=device, dtype=dtype, seed=seed)
