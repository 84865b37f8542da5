"""AMT-S, the frame interpolator of VBench's ``motion_smoothness``, and its loader for ``amt-s.pth``.

The network is MCG-NKU/AMT's ``networks/AMT-S.py`` ``Model`` with the configuration of
``cfgs/AMT-S.yaml`` (which VBench's ``pretrained/amt_model/AMT-S.yaml`` repeats): correlation radius
3, 4 correlation levels, 3 flow pairs, context channels 20/32/44/56. Its state-dict keys equal the
official ones, so the released checkpoint loads with ``strict=True``.

Order of work, for a middle frame at time ``embt``: subtract the pair's mean colour; correlation
features at 1/8 and context pyramids of both frames; the coarsest decoder guesses flows t->0, t->1
at 1/8, then three stages each refine them with the correlation volume (looked up where the flows,
scaled by 1/t and 1/(1-t), point) and go one resolution up; the last stage yields 3
full-resolution flow pairs whose warped, blended candidates are merged into one frame.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.amt.decoders import (
    InitDecoder,
    IntermediateDecoder,
    MultiFlowDecoder,
    merge_predictions,
)
from models.amt.encoders import FeatureEncoder, PyramidEncoder
from models.amt.flow import CorrelationPyramid, pixel_grid, resize
from models.amt.update import UpdateBlock
from models.state_dicts import load_strict, strip_ddp_prefix
from models.weights import RANDOM, entry, warn_random, weight_id

REGISTRY_NAME = "amt_s"
CORR_RADIUS = 3
CORR_LEVELS = 4
NUM_FLOWS = 3
CHANNELS = (20, 32, 44, 56)  # context pyramid, 1/2 .. 1/16 resolution
SIDE_CHANNELS = 20
FEATURE_DIM = 84  # correlation features
SIZE_MULTIPLE = 16  # inputs' height and width (the pyramid's coarsest level is 1/16)
# The coarsest correlation level is 1/(8 * 2^(levels-1)) = 1/64 of the input; a side of one pixel
# there divides by zero in the lookup's normalisation (the official model returns NaN), so 2 is needed.
MIN_SIZE = 8 * 2 ** (CORR_LEVELS - 1) * 2


class AmtS(nn.Module):
    """``model(img0, img1, embt, scale_factor=1.0, eval=True)["imgt_pred"]``: the frame at time
    ``embt`` (B, 1, 1, 1; 0.5 is the middle) between ``img0`` and ``img1`` (B, 3, H, W, RGB in 0..1,
    H and W multiples of 16), clamped to 0..1. ``scale_factor`` < 1 estimates the flows on frames
    resized by it (VBench's memory saver) and warps at full size. Only the prediction is returned
    (``eval`` is accepted for the official call signature; the project never trains AMT).
    """

    def __init__(self):
        super().__init__()
        self.weight_id = RANDOM
        self.feat_encoder = FeatureEncoder(FEATURE_DIM)
        self.encoder = PyramidEncoder(CHANNELS)
        self.decoder4 = InitDecoder(CHANNELS[3], CHANNELS[2], SIDE_CHANNELS)
        self.decoder3 = IntermediateDecoder(CHANNELS[2], CHANNELS[1], SIDE_CHANNELS)
        self.decoder2 = IntermediateDecoder(CHANNELS[1], CHANNELS[0], SIDE_CHANNELS)
        self.decoder1 = MultiFlowDecoder(CHANNELS[0], SIDE_CHANNELS, NUM_FLOWS)
        # Feature widths at t after decoders 4, 3, 2; scale from 1/8 (the correlation volume) to theirs.
        self.update4 = UpdateBlock(CHANNELS[2], None, corr_levels=CORR_LEVELS, radius=CORR_RADIUS)
        self.update3 = UpdateBlock(CHANNELS[1], 2, corr_levels=CORR_LEVELS, radius=CORR_RADIUS)
        self.update2 = UpdateBlock(CHANNELS[0], 4, corr_levels=CORR_LEVELS, radius=CORR_RADIUS)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * NUM_FLOWS, 6 * NUM_FLOWS, 3, 1, 1), nn.PReLU(6 * NUM_FLOWS),
                                        nn.Conv2d(6 * NUM_FLOWS, 3, 3, 1, 1))

    @staticmethod
    def _refine(update: UpdateBlock, corr: CorrelationPyramid, grid: torch.Tensor, flow0: torch.Tensor,
                flow1: torch.Tensor, features: torch.Tensor, embt: torch.Tensor, down: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One update stage. The flows (at 1/8 times ``down``) are brought to 1/8 and scaled as the
        official model does, t->1 by 1/t and t->0 by 1/(1-t) (at t = 1/2 and constant motion: the
        flows 0->1 and 1->0); the 0->1 correlations are read where the first points, the 1->0 ones
        where the second does. The residuals are added to the flows at their own resolution."""
        small0, small1 = flow0, flow1
        if down != 1:
            small0, small1 = (1 / down) * resize(flow0, 1 / down), (1 / down) * resize(flow1, 1 / down)
        corr0, corr1 = corr(grid + small1 * (1.0 / embt), grid + small0 * (1.0 / (1.0 - embt)))
        delta_features, delta_flow = update(features, torch.cat((small0, small1), dim=1),
                                            torch.cat((corr0, corr1), dim=1))
        delta0, delta1 = delta_flow.chunk(2, dim=1)
        return flow0 + delta0, flow1 + delta1, features + delta_features

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor, scale_factor: float = 1.0,
                eval: bool = True, **_: object) -> dict[str, torch.Tensor]:
        mean = torch.cat((img0, img1), dim=2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        small0 = resize(img0, scale_factor) if scale_factor != 1.0 else img0
        small1 = resize(img1, scale_factor) if scale_factor != 1.0 else img1
        batch, _, height, width = small0.shape
        check_size(height, width)
        grid = pixel_grid(batch, height // 8, width // 8, img0.device)
        corr = CorrelationPyramid(*self.feat_encoder([small0, small1]), levels=CORR_LEVELS, radius=CORR_RADIUS)
        c0, c1 = self.encoder(small0), self.encoder(small1)  # 1/2, 1/4, 1/8, 1/16

        flow0, flow1, features = self.decoder4(c0[3], c1[3], embt)
        flow0, flow1, features = self._refine(self.update4, corr, grid, flow0, flow1, features, embt, 1)
        flow0, flow1, features = self.decoder3(features, c0[2], c1[2], flow0, flow1)
        flow0, flow1, features = self._refine(self.update3, corr, grid, flow0, flow1, features, embt, 2)
        flow0, flow1, features = self.decoder2(features, c0[1], c1[1], flow0, flow1)
        flow0, flow1, features = self._refine(self.update2, corr, grid, flow0, flow1, features, embt, 4)
        flow0, flow1, mask, residual = self.decoder1(features, c0[0], c1[0], flow0, flow1)

        if scale_factor != 1.0:
            up = 1.0 / scale_factor
            flow0, flow1 = resize(flow0, up) * up, resize(flow1, up) * up
            mask, residual = resize(mask, up), resize(residual, up)
        middle = merge_predictions(self.comb_block, img0, img1, flow0, flow1, mask, residual, mean)
        return {"imgt_pred": middle.clamp(0, 1)}


def check_size(height: int, width: int) -> None:
    """Sizes the official network computes: multiples of 16 (the decoders meet the encoders' sizes)
    and at least ``MIN_SIZE`` (finite correlation lookups); pad smaller or odd frames first."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < MIN_SIZE:
        raise ValueError(f"AMT-S needs frames (after scale_factor) whose sides are multiples of {SIZE_MULTIPLE} "
                         f"and at least {MIN_SIZE} px, got {height}x{width}")


def _numpy_scalar_globals() -> list:
    """What ``amt-s.pth`` needs beyond plain tensors: its optimizer state stores the cosine-scheduled
    learning rate as a numpy float64 (hence VBench's ``weights_only=False``). Allowed by name, old
    (``numpy.core``, numpy 1.x wrote the file) and new (``numpy._core``), nothing executable."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            type(np.dtype(np.float64))]


def read_amt_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The network's state dict from an AMT checkpoint (``{"state_dict": ..., "epoch", "optim"}``, as
    AMT's trainer saves it) or a bare state dict, loaded weights-only; errors name the file."""
    if not path.is_file():
        w = entry(REGISTRY_NAME)
        raise FileNotFoundError(
            f"AMT-S weights not found: {path}. Get them with `python -m models.weights fetch --only {REGISTRY_NAME}` "
            f"(downloads {w.url} to <weights folder>/{w.path}; see `python -m models.weights verify`), "
            f"or download that file yourself and pass its path")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or objects beyond the allowed ones
        raise ValueError(f"{path} is not a readable weights-only AMT checkpoint: {e}") from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} holds neither an AMT checkpoint ({{'state_dict': ...}}) nor a state dict")
    return strip_ddp_prefix(checkpoint)


def load_amt_s(weights: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> AmtS:
    """AMT-S in eval mode, gradients off, from ``amt-s.pth`` (strict) or ``"random"``.

    Random mode seeds a forked RNG (the caller's stays untouched), warns loudly and records
    ``weight_id == "random"``; a file records its sha256.
    """
    if str(weights) == RANDOM:
        warn_random(REGISTRY_NAME)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AmtS()
    else:
        path = Path(weights)
        state = read_amt_state_dict(path)
        model = AmtS()
        load_strict(model, state, path, "AMT-S")
        model.weight_id = weight_id(path)
    return model.to(device).eval().requires_grad_(False)
