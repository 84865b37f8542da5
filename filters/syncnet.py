"""SyncNet lip-sync scores (offset, Sync-C, Sync-D) computed as syncnet_python computes them.

The network mirrors syncnet_python's ``S``: an audio tower (``netcnnaud`` 2D convs on MFCC windows,
``netfcaud``) and a lip tower (``netcnnlip`` 3D convs on 5-frame windows, ``netfclip``), both ending
in 1024-dim embeddings; keys and shapes match ``syncnet_v2.model``. The released file was saved by an
old PyTorch without BatchNorm ``num_batches_tracked`` buffers, so exactly those may be absent.

Protocol (syncnet_python's ``evaluate``):
- video: 25 fps whole-face crops 224x224 in BGR order, values 0..255 as floats, windows of 5 frames;
- audio: 16 kHz mono int16 samples into ``python_speech_features.mfcc`` with its defaults (13
  coefficients at 100 Hz); video frame v pairs with MFCC columns 4v .. 4v+20;
- n = min(frames, samples // 640) - 5 windows (syncnet_python's count, which leaves the last
  possible window out);
- for each window, L2 distance (``pairwise_distance``, eps 1e-6) to the audio embeddings at shifts
  -vshift..+vshift, zero-padded at the ends; mean over windows per shift;
  offset = vshift - argmin, Sync-D = min, Sync-C = median - min;
- per-window confidence = median of the mean distances - that window's distance at the best shift
  (syncnet_python's ``fconf``, which it then smooths with a 9-tap median filter for display).

``window_stride`` > 1 (an option, not syncnet_python's protocol) runs the lip tower on every k-th
window only, while the cheap audio tower still runs on every window, so offsets keep their
one-frame resolution: the mean distance per shift is then the mean over an evenly spaced subsample
of the windows, an unbiased estimate of the full mean. The lip tower is most of SyncNet's cost
(bench/models.py), so stride 2 nearly halves it.

Sign of the offset: a positive offset means the audio leads the video (the sound of a lip movement
arrives ``offset`` frames early); audio that lags the video by k frames gives offset = -k.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.onnx_cpu import OnnxCpu, placement
from pipeline.weights import RANDOM, warn_random, weight_id

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
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
            raise FileNotFoundError(f"SyncNet weights not found: {path} (see `python -m pipeline.weights verify`)")
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
    runs 1.2x faster there (33.5 vs 27.5 windows/s on one thread); eager PyTorch gains nothing.
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
    """SyncNet's two towers on ONNX Runtime (CPU): same embeddings within 1e-5, 1.4x the frames/s
    of eager on one thread (bench/models.py; the lip tower exported as :class:`LipTower2d`)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, model: SyncNet, threads: int = 1, cache_dir: str | Path | None = None):
        self.forward_video = OnnxCpu(LipTower2d(model), torch.zeros(2, 3, WINDOW_FRAMES, CROP_SIZE, CROP_SIZE),
                                     "syncnet_v2_video", threads=threads, cache_dir=cache_dir)
        self.forward_audio = OnnxCpu(AudioTower(model), torch.zeros(2, 1, 13, MFCC_WINDOW),
                                     "syncnet_v2_audio", threads=threads, cache_dir=cache_dir)
        self.weight_id = model.weight_id


@dataclass(frozen=True)
class SyncResult:
    """offset (frames; > 0: audio leads), conf (Sync-C), dist (Sync-D), frame_conf (n_windows,),
    dists (2*vshift+1,) mean distance per shift, from -vshift to +vshift audio frames."""

    offset: int
    conf: float
    dist: float
    frame_conf: np.ndarray
    dists: np.ndarray


def score_embeddings(video: np.ndarray | torch.Tensor, audio: np.ndarray | torch.Tensor,
                     vshift: int = 15, windows: np.ndarray | torch.Tensor | None = None) -> SyncResult:
    """The scoring math alone: lip embeddings (m, D) of the windows ``windows`` (m,) (None: every
    window, m == n) against the audio embeddings (n, D) of every window -> SyncResult."""
    video = torch.as_tensor(video, dtype=torch.float32)
    audio = torch.as_tensor(audio, dtype=torch.float32)
    index = torch.arange(len(audio)) if windows is None else torch.as_tensor(windows, dtype=torch.long)
    if video.ndim != 2 or audio.ndim != 2 or video.shape[1] != audio.shape[1] or len(video) == 0 \
            or len(index) != len(video) or (len(index) and int(index.max()) >= len(audio)):
        raise ValueError(f"need lip embeddings (m, D) for m windows of the audio embeddings (n, D), got "
                         f"{tuple(video.shape)} for {len(index)} windows and {tuple(audio.shape)}")
    width = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    candidates = padded[index[:, None] + torch.arange(width)[None, :]]  # (m, width, D)
    dists = F.pairwise_distance(video[:, None, :].expand_as(candidates), candidates)  # (m, width)
    mean_dist = dists.mean(0)
    min_dist, best = torch.min(mean_dist, 0)
    median = torch.median(mean_dist)
    return SyncResult(
        offset=int(vshift - best),
        conf=float(median - min_dist),
        dist=float(min_dist),
        frame_conf=(median - dists[:, best]).numpy(),
        dists=mean_dist.numpy(),
    )


def mfcc_columns(audio: np.ndarray) -> np.ndarray:
    """float32 16 kHz mono in [-1, 1] -> MFCC (13, n_columns), from int16-scaled samples."""
    samples = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    return python_speech_features.mfcc(samples, SAMPLE_RATE).T


def sync_scores(model: SyncNet | SyncNetOnnxCpu, crops: np.ndarray, audio: np.ndarray, vshift: int = 15,
                batch_size: int = 16, window_stride: int = 1) -> SyncResult:
    """Score lip sync of 25 fps RGB face crops (T, 224, 224, 3) uint8 against 16 kHz mono audio;
    the lip tower sees every ``window_stride``-th window (1: every window, as syncnet_python)."""
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected uint8 RGB crops (T, {CROP_SIZE}, {CROP_SIZE}, 3), got {crops.dtype} {crops.shape}")
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float mono audio (N,), got {audio.dtype} {audio.shape}")
    if window_stride < 1:
        raise ValueError(f"window_stride must be >= 1, got {window_stride}")
    n_windows = min(len(crops), len(audio) // SAMPLES_PER_FRAME) - WINDOW_FRAMES
    if n_windows < 1:
        raise ValueError(f"too short for SyncNet: {len(crops)} frames, {len(audio) / SAMPLE_RATE:.2f} s of audio "
                         f"(needs at least {WINDOW_FRAMES + 1} frames of both)")
    mfcc = torch.from_numpy(mfcc_columns(audio).astype(np.float32))
    device = placement(model)[0]
    windows = np.arange(0, n_windows, window_stride)
    video_emb, audio_emb = [], []
    with torch.inference_mode():
        for start in range(0, n_windows, batch_size):
            stop = min(n_windows, start + batch_size)
            cols = torch.stack([mfcc[:, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_WINDOW]
                                for v in range(start, stop)])[:, None]  # (n, 1, 13, 20)
            audio_emb.append(model.forward_audio(cols.to(device)).cpu())
        # The clip goes to the model's device once and windows are gathered there: each frame is
        # in 5 windows, so stacking them on the host would copy and transfer every frame 5 times.
        clip = torch.from_numpy(crops).to(device)
        offsets = torch.arange(WINDOW_FRAMES, device=device)
        for first in range(0, len(windows), batch_size):
            chosen = torch.from_numpy(windows[first:first + batch_size]).to(device)
            frames = clip[chosen[:, None] + offsets].flip(-1)  # (m, 5, H, W, 3), RGB -> BGR
            batch = frames.permute(0, 4, 1, 2, 3).float()  # (m, 3, 5, H, W)
            video_emb.append(model.forward_video(batch.contiguous()).cpu())
    return score_embeddings(torch.cat(video_emb), torch.cat(audio_emb), vshift, windows)
