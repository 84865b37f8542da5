"""AMT-S's coarse-to-fine decoders and the final merge of its several flow pairs.

Each decoder predicts, one resolution up, the flows from the middle frame t to frames 0 and 1 and
the features at t. The first (``InitDecoder``) starts from the two frames' coarsest context and t
itself; the next ones (``IntermediateDecoder``) warp both frames' context by the current flows
and predict a residual over the doubled flows; the last (``MultiFlowDecoder``) predicts several
flow pairs at full resolution, each with a blend mask and an image residual, merged by
``merge_predictions``. Names and channel splits follow ``networks/blocks/ifrnet.py`` and
``networks/blocks/multi_flow.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from models.amt.encoders import conv_prelu
from models.amt.flow import backward_warp, resize


class SideResBlock(nn.Module):
    """Residual 3x3 block whose last ``side_channels`` channels get an extra conv-PReLU after each of
    the first two convs (IFRNet's ``ResBlock``): a cheap side path for the predicted features."""

    def __init__(self, channels: int, side_channels: int):
        super().__init__()
        self.side_channels = side_channels
        self.conv1 = conv_prelu(channels, channels)
        self.conv2 = conv_prelu(side_channels, side_channels)
        self.conv3 = conv_prelu(channels, channels)
        self.conv4 = conv_prelu(side_channels, side_channels)
        self.conv5 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.prelu = nn.PReLU(channels)

    def _side(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        s = self.side_channels
        return torch.cat((x[:, :-s], conv(x[:, -s:])), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self._side(self.conv1(x), self.conv2))
        out = self.conv5(self._side(out, self.conv4))
        return self.prelu(x + out)


def decoder_block(in_channels: int, width: int, side_channels: int, out_channels: int) -> nn.Sequential:
    """conv-PReLU to ``width``, side-path residual block, 4x4 stride-2 transposed conv (doubles the resolution)."""
    return nn.Sequential(conv_prelu(in_channels, width), SideResBlock(width, side_channels),
                         nn.ConvTranspose2d(width, out_channels, 4, 2, 1))


class InitDecoder(nn.Module):
    """Coarsest context of both frames and t -> flows t->0, t->1 (2 channels each) and ``out_channels``
    features at t, at twice the input resolution."""

    def __init__(self, in_channels: int, out_channels: int, side_channels: int):
        super().__init__()
        self.convblock = decoder_block(2 * in_channels + 1, 2 * in_channels, side_channels, out_channels + 4)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, embt: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = embt.repeat(1, 1, *f0.shape[2:])
        out = self.convblock(torch.cat((f0, f1, t), dim=1))
        flow0, flow1 = out[:, :4].chunk(2, dim=1)
        return flow0, flow1, out[:, 4:]


def _warped_inputs(ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor,
                   flow1: torch.Tensor) -> torch.Tensor:
    """What every later decoder reads: features at t, both frames' context pulled to t, the flows."""
    return torch.cat((ft, backward_warp(f0, flow0), backward_warp(f1, flow1), flow0, flow1), dim=1)


class IntermediateDecoder(nn.Module):
    """Features at t, both frames' context warped to t and the current flows -> residuals over the
    doubled (and upsampled) flows, and ``out_channels`` new features at t, at twice the resolution."""

    def __init__(self, in_channels: int, out_channels: int, side_channels: int):
        super().__init__()
        self.convblock = decoder_block(3 * in_channels + 4, 3 * in_channels, side_channels, out_channels + 4)

    def forward(self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor,
                flow1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.convblock(_warped_inputs(ft, f0, f1, flow0, flow1))
        delta0, delta1 = out[:, :4].chunk(2, dim=1)
        return delta0 + 2.0 * resize(flow0, 2.0), delta1 + 2.0 * resize(flow1, 2.0), out[:, 4:]


class MultiFlowDecoder(nn.Module):
    """The last decoder: ``num_flows`` full-resolution flow pairs (residuals over the doubled input
    flows), one sigmoid blend mask and one RGB residual per pair."""

    def __init__(self, in_channels: int, side_channels: int, num_flows: int):
        super().__init__()
        self.num_flows = num_flows
        self.convblock = decoder_block(3 * in_channels + 4, 3 * in_channels, side_channels, 8 * num_flows)

    def forward(self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor,
                flow1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.num_flows
        out = self.convblock(_warped_inputs(ft, f0, f1, flow0, flow1))
        delta0, delta1, mask, residual = out.split([2 * n, 2 * n, n, 3 * n], dim=1)
        flow0 = delta0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = delta1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        return flow0, flow1, torch.sigmoid(mask), residual


def merge_predictions(comb_block: nn.Module, img0: torch.Tensor, img1: torch.Tensor, flow0: torch.Tensor,
                      flow1: torch.Tensor, mask: torch.Tensor, residual: torch.Tensor,
                      mean: torch.Tensor) -> torch.Tensor:
    """One middle frame from ``n`` flow pairs (``multi_flow_combine``).

    Each pair warps the mean-subtracted frames to t, blends them by its mask and adds back the mean
    and its residual; the result is the average of the ``n`` candidates plus ``comb_block``'s
    correction computed from all of them. ``flow0``/``flow1`` are (B, 2n, H, W), pair by pair.
    """
    b, c, h, w = flow0.shape
    n = c // 2
    flow0 = flow0.reshape(b * n, 2, h, w)
    flow1 = flow1.reshape(b * n, 2, h, w)
    mask = mask.reshape(b * n, 1, h, w)
    residual = residual.reshape(b * n, 3, h, w)
    img0 = img0[:, None].expand(-1, n, -1, -1, -1).reshape(b * n, 3, h, w)
    img1 = img1[:, None].expand(-1, n, -1, -1, -1).reshape(b * n, 3, h, w)
    mean = mean[:, None].expand(-1, n, -1, -1, -1).reshape(b * n, 1, 1, 1)
    candidates = mask * backward_warp(img0, flow0) + (1 - mask) * backward_warp(img1, flow1) + mean + residual
    candidates = candidates.reshape(b, n, 3, h, w)
    return candidates.mean(dim=1) + comb_block(candidates.reshape(b, 3 * n, h, w))
