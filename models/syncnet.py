"""SyncNet, the network of syncnet_python, loadable from the official ``syncnet_v2.model``.

The network mirrors syncnet_python's ``S``: an audio tower (``netcnnaud`` 2D convs on MFCC windows,
``netfcaud``) and a lip tower (``netcnnlip`` 3D convs on 5-frame windows, ``netfclip``), both ending
in 1024-dim embeddings; keys and shapes match ``syncnet_v2.model``. The released file was saved by an
old PyTorch without BatchNorm ``num_batches_tracked`` buffers, so exactly those may be absent.
The scoring protocol that uses the embeddings lives in ``filters.syncnet``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.onnx_cpu import OnnxCpu, placement
from models.weights import RANDOM, warn_random, weight_id

CROP_SIZE = 224
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
MFCC_WINDOW = 20
EMBED_DIM = 1024


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """syncnet_python's ``S``; Sequential indices match the checkpoint's keys."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64)),            # 0-2
            nn.MaxPool2d(kernel_size=1, stride=1),                                           # 3
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192)),           # 4-6
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),                                      # 7
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),          # 8-10
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),          # 11-13
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),          # 14-16
            nn.MaxPool2d(kernel_size=3, stride=2),                                           # 17
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),                # 18-20
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),               # 0-2
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),                                          # 3
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                           nn.BatchNorm3d(256)),                                                            # 4-6
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),                       # 7
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),         # 8-10
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),         # 11-13
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),         # 14-16
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),                                          # 17
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),                            # 18-20
        )
        self.weight_id = RANDOM

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """MFCC windows (B, 1, 13, 20) -> embeddings (B, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 windows (B, 3, 5, 224, 224) -> embeddings (B, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(weights: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> SyncNet:
    """Build SyncNet in eval mode from ``syncnet_v2.model`` or ``"random"``.

    Every key must be present with its shape, except the BatchNorm ``num_batches_tracked``
    buffers, which the released file lacks (they play no part at inference); no extra keys.
    """
    if str(weights) == RANDOM:
        warn_random("syncnet_v2")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SyncNet()
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"SyncNet weights not found: {path} (see `python -m models.weights verify`)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
        model = SyncNet()
        expected = set(model.state_dict())
        missing = sorted(k for k in expected - set(state) if not k.endswith(".num_batches_tracked"))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{path} is not a syncnet_v2 state dict: missing {missing[:8]}"
                             f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                             f"{'...' if len(unexpected) > 8 else ''}")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"{path} does not match the SyncNet architecture:\n{e}") from None
        model.weight_id = weight_id(path)
    return model.to(device).eval().requires_grad_(False)


def _layer_2d(layer: nn.Module) -> nn.Module:
    """The 2D layer that computes what a lip-tower 3D layer computes on a window it spans in time."""
    if isinstance(layer, nn.Conv3d):
        if layer.stride[0] != 1 or layer.padding[0] != 0:
            raise ValueError(f"{layer} mixes time steps; it has no 2D equivalent")
        conv = nn.Conv2d(layer.in_channels * layer.kernel_size[0], layer.out_channels, layer.kernel_size[1:],
                         stride=layer.stride[1:], padding=layer.padding[1:])
        conv.weight.data = layer.weight.data.reshape(conv.weight.shape)  # (out, in, t, h, w) -> (out, in*t, h, w)
        conv.bias.data = layer.bias.data
        return conv
    if isinstance(layer, nn.BatchNorm3d):
        norm = nn.BatchNorm2d(layer.num_features, eps=layer.eps)
        norm.load_state_dict(layer.state_dict())
        return norm
    if isinstance(layer, nn.MaxPool3d):
        padding = layer.padding[1:] if isinstance(layer.padding, tuple) else layer.padding
        return nn.MaxPool2d(layer.kernel_size[1:], stride=layer.stride[1:], padding=padding)
    return layer


class LipTower2d(nn.Module):
    """The lip tower as a 2D CNN over the window's 15 (colour x frame) channels, for export.

    Its first Conv3d spans the whole 5-frame window (no temporal padding), so every later layer
    sees a single time step and each 3D layer equals a 2D one: the same embeddings within 1e-5.
    ONNX Runtime's blocked (NCHWc) convolution kernels cover 2D convolutions only, so this form
    runs faster there than the 3D one; eager PyTorch gains nothing.
    """

    def __init__(self, model: SyncNet):
        super().__init__()
        self.cnn = nn.Sequential(*(_layer_2d(layer) for layer in model.netcnnlip)).eval()
        self.fc = model.netfclip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 windows (B, 3, 5, 224, 224) -> embeddings (B, 1024), as ``forward_video``."""
        return self.fc(self.cnn(frames.flatten(1, 2)).flatten(1))


class AudioTower(nn.Module):
    """The audio tower as a module of its own, for export."""

    def __init__(self, model: SyncNet):
        super().__init__()
        self.cnn, self.fc = model.netcnnaud, model.netfcaud

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(mfcc).flatten(1))


class SyncNetOnnxCpu:
    """SyncNet's two towers on ONNX Runtime (CPU): same embeddings within 1e-5, faster than eager
    (bench/models.py; the lip tower exported as :class:`LipTower2d`)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, model: SyncNet, threads: int = 1, cache_dir: str | Path | None = None):
        self.forward_video = OnnxCpu(LipTower2d(model), torch.zeros(2, 3, WINDOW_FRAMES, CROP_SIZE, CROP_SIZE),
                                     "syncnet_v2_video", threads=threads, cache_dir=cache_dir)
        self.forward_audio = OnnxCpu(AudioTower(model), torch.zeros(2, 1, 13, MFCC_WINDOW),
                                     "syncnet_v2_audio", threads=threads, cache_dir=cache_dir)
        self.weight_id = model.weight_id
