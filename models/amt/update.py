"""AMT-S's correlation-guided update: one residual step on the flows to t and the features at t.

RAFT's small update block as AMT uses it (``SmallUpdateBlock`` in ``networks/blocks/raft.py``): no
recurrence despite the ``gru`` name, which is kept because the checkpoint's keys carry it. Stages
finer than the correlation volume (1/8 resolution) work at 1/8 and upsample their outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from models.amt.flow import resize


def _two_convs(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """3x3 conv, LeakyReLU(0.1), 3x3 conv (the layout of ``gru``, ``feat_head`` and ``flow_head``)."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(hidden, out_channels, 3, padding=1))


class UpdateBlock(nn.Module):
    """(features at t, flows t->0 | t->1, correlation windows) at 1/8 resolution -> residuals of the
    features (``feature_dim`` channels) and of the 4 flow channels.

    ``scale`` (None, 2 or 4) is how much finer than 1/8 the stage's features are: they are resized to
    1/8 on the way in, and both residuals back on the way out (flows also multiplied by ``scale``).
    """

    def __init__(self, feature_dim: int, scale: int | None = None, hidden_dim: int = 76, flow_dim: int = 20,
                 corr_dim: int = 64, fc_dim: int = 68, corr_levels: int = 4, radius: int = 3):
        super().__init__()
        self.scale = scale
        window = corr_levels * (2 * radius + 1) ** 2  # per direction
        self.convc1 = nn.Conv2d(2 * window, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, padding=3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)
        self.gru = _two_convs(fc_dim + 4 + feature_dim, hidden_dim, hidden_dim)
        self.feat_head = _two_convs(hidden_dim, hidden_dim, feature_dim)
        self.flow_head = _two_convs(hidden_dim, hidden_dim, 4)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, features: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is not None:
            features = resize(features, 1 / self.scale)
        motion = torch.cat((self.lrelu(self.convc1(corr)), self.lrelu(self.convf2(self.lrelu(self.convf1(flow))))),
                           dim=1)
        hidden = self.gru(torch.cat((self.lrelu(self.conv(motion)), flow, features), dim=1))
        delta_features, delta_flow = self.feat_head(hidden), self.flow_head(hidden)
        if self.scale is not None:
            delta_features = resize(delta_features, self.scale)
            delta_flow = self.scale * resize(delta_flow, self.scale)
        return delta_features, delta_flow
