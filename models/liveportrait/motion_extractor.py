"""LivePortrait's motion extractor: ConvNeXt-V2-Tiny plus linear heads, loadable from the official file.

The module tree mirrors the official one (``detector.downsample_layers``, ``detector.stages``,
``detector.norm``, ``detector.fc_*``), so ``motion_extractor.pth`` (a plain state dict) loads with
``strict=True``; the keys and shapes are pinned by ``../shared/reference/
liveportrait_motion_extractor.keys.json`` in the tests. The forward pass computes what the official
one does, including its hand-written channels-first LayerNorm and the GRN of ConvNeXt V2. Drop path
is omitted: it is the identity at inference.

Input: RGB face crops (B, 3, 256, 256), float in [0, 1] (LivePortrait divides uint8 by 255, no
mean/std). Output: the raw official dict ``kp`` (B, 63), ``exp`` (B, 63), ``pitch``/``yaw``/``roll``
(B, 66) bin logits, ``t`` (B, 3), ``scale`` (B, 1). ``shards.pose`` turns logits into degrees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.onnx_cpu import OnnxCpu, placement
from models.state_dicts import load_strict, read_state_dict
from models.weights import RANDOM, warn_random, weight_id
from shards.format import MOTION_SHAPES

DEPTHS = (3, 3, 9, 3)
DIMS = (96, 192, 384, 768)
NUM_KP = 21
NUM_BINS = 66
CROP_SIZE = 256
LN_EPS = 1e-6
OUTPUTS = ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")  # the official forward's dict order


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W), computed as the official code writes it."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on channels-last (B, H, W, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official ``gamma * (x * relative) + beta + x``, with the per-channel factors folded
        # first so the (B, H, W, 4C) tensor sees one multiply and one add, and the L2 norm written
        # as a sum of squares, which ONNX Runtime fuses (its ReduceL2 over the spatial axes alone
        # is a large share of the forward); equal within float rounding.
        spatial_norm = (x * x).sum(dim=(1, 2), keepdim=True).sqrt()
        relative = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + 1e-6)
        return x * (self.gamma * relative + 1.0) + self.beta


class Block(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x pointwise MLP with GELU and GRN, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2-Tiny backbone with LivePortrait's motion heads."""

    def __init__(self, depths: tuple[int, ...] = DEPTHS, dims: tuple[int, ...] = DIMS,
                 num_kp: int = NUM_KP, num_bins: int = NUM_BINS):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0]))
        self.downsample_layers = nn.ModuleList([stem] + [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            for i in range(len(dims) - 1)
        ])
        self.stages = nn.ModuleList([nn.Sequential(*[Block(dim) for _ in range(depth)])
                                     for depth, dim in zip(depths, dims)])
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        width = dims[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        features = self.norm(x.mean([-2, -1]))
        return {
            "kp": self.fc_kp(features),
            "exp": self.fc_exp(features),
            "pitch": self.fc_pitch(features),
            "yaw": self.fc_yaw(features),
            "roll": self.fc_roll(features),
            "t": self.fc_t(features),
            "scale": self.fc_scale(features),
        }


class MotionExtractor(nn.Module):
    """The official wrapper: the network sits under ``detector`` so the checkpoint keys match."""

    def __init__(self, **kwargs):
        super().__init__()
        self.detector = ConvNeXtV2(**kwargs)
        self.weight_id = RANDOM

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB in [0, 1], got {tuple(x.shape)}")
        return self.detector(x)


def load_motion_extractor(weights: str | Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype | None = None, seed: int = 0) -> MotionExtractor:
    """Build the extractor in eval mode from ``motion_extractor.pth`` (strict) or ``"random"``.

    Random mode seeds its own RNG (the caller's is untouched), warns loudly and records
    ``weight_id == "random"``; a real file records its sha256 as ``weight_id``.
    """
    if str(weights) == RANDOM:
        warn_random("liveportrait_motion_extractor")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MotionExtractor()
    else:
        path = Path(weights)
        state = read_state_dict(path, "LivePortrait motion extractor")
        model = MotionExtractor()
        load_strict(model, state, path, "LivePortrait motion extractor")
        model.weight_id = weight_id(path)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def on_onnx_cpu(model: MotionExtractor, threads: int = 1, cache_dir: str | Path | None = None) -> OnnxCpu:
    """The extractor on ONNX Runtime (CPU): same outputs within 1e-5, faster than eager (bench/models.py)."""
    return OnnxCpu(model, torch.zeros(2, 3, CROP_SIZE, CROP_SIZE), "liveportrait_motion_extractor",
                   output_names=OUTPUTS, threads=threads, cache_dir=cache_dir)


def extract(model: MotionExtractor | OnnxCpu, crops: np.ndarray, batch_size: int = 32,
            amp_dtype: torch.dtype | None = torch.float16) -> dict[str, np.ndarray]:
    """Run the extractor over uint8 RGB crops (T, 256, 256, 3) in batches.

    Returns float32 arrays shaped as the shard format stores them (``shards.format.MOTION_SHAPES``):
    ``kp``/``exp`` (T, 21, 3), ``pitch``/``yaw``/``roll`` (T, 66), ``t`` (T, 3), ``scale`` (T, 1).
    On a GPU the forward runs under autocast with ``amp_dtype`` (LivePortrait uses fp16); on CPU in
    the model's dtype.
    """
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected uint8 crops (T, {CROP_SIZE}, {CROP_SIZE}, 3), "
                         f"got {crops.dtype} {crops.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, dtype = placement(model)
    use_amp = device.type == "cuda" and amp_dtype is not None
    pieces: dict[str, list[np.ndarray]] = {k: [] for k in MOTION_SHAPES}
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[start:start + batch_size]).to(device)
            x = (batch.permute(0, 3, 1, 2).float() / 255.0).to(dtype)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=use_amp):
                out = model(x)
            for key, shape in MOTION_SHAPES.items():
                pieces[key].append(out[key].float().cpu().numpy().reshape(-1, *shape))
    return {key: (np.concatenate(pieces[key]) if pieces[key] else np.zeros((0, *shape), np.float32))
            for key, shape in MOTION_SHAPES.items()}
