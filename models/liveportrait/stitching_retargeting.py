"""LivePortrait's stitching and retargeting MLPs S, and the keypoint edits they make.

One file, ``stitching_retargeting_module.pth``, holds three state dicts: ``retarget_shoulder`` (the
stitching MLP: source and driving keypoints (B, 126) -> 63 expression deltas + tx, ty, so the
animated crop lines up with the still shoulders when pasted back), ``retarget_mouth`` (lip
retargeting: source keypoints + [source, target] lip-open ratios (B, 65) -> 63 deltas) and
``retarget_eye`` (source keypoints + [left, right, target] eye-open ratios (B, 66) -> 63 deltas).
Their keys may carry the ``module.`` prefix of DistributedDataParallel; the loader strips it as
LivePortrait does. Keys pinned by ``shared/reference/liveportrait_stitching_retargeting_module.keys.json``.

The methods follow LivePortrait's ``live_portrait_wrapper``: ``stitch`` is its ``stitching`` (x_d
plus the delta), ``stitch_delta`` its ``stitch`` (the raw 65 numbers), ``retarget_lip`` and
``retarget_eye`` return (B, 21, 3) deltas to add to the keypoints. The close-ratio helpers compute
the ratios from LivePortrait's 203-point landmarks.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.state_dicts import load_strict, read_state_dict, strip_ddp_prefix
from models.weights import RANDOM, warn_random, weight_id

REGISTRY_NAME = "liveportrait_stitching_retargeting_module"
LIP_NORMALIZE_THRESHOLD = 0.03  # flag_normalize_lip closes the source mouth only when its ratio is >= this
# models.yaml's stitching_retargeting_module_params, under the checkpoint's names.
MLP_SIZES = {
    "retarget_shoulder": (126, (128, 128, 64), 65),     # stitching: (21*3)*2 -> 21*3 + tx, ty
    "retarget_mouth": (65, (128, 128, 64), 63),         # lip: 21*3 + 2 ratios -> 21*3
    "retarget_eye": (66, (256, 256, 128, 128, 64), 63),  # eye: 21*3 + 3 ratios -> 21*3
}


class StitchingRetargetingNetwork(nn.Module):
    """Linear + ReLU per hidden size, then a linear output (keys ``mlp.0``, ``mlp.2``, ...)."""

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int):
        super().__init__()
        sizes = [input_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class StitchingRetargetingModule(nn.Module):
    """The three MLPs under the checkpoint's names, with LivePortrait's keypoint edits."""

    def __init__(self):
        super().__init__()
        for name, (n_in, hidden, n_out) in MLP_SIZES.items():
            setattr(self, name, StitchingRetargetingNetwork(n_in, hidden, n_out))
        self.weight_id = RANDOM

    def checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """The official file's layout: ``{retarget_shoulder: state dict, retarget_mouth: ..., retarget_eye: ...}``."""
        return {name: getattr(self, name).state_dict() for name in MLP_SIZES}

    def stitch_delta(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """(B, 65): 63 keypoint deltas then tx, ty, from the flattened [x_s, x_d] (B, 126)."""
        b = x_s.shape[0]
        return self.retarget_shoulder(torch.cat([x_s.reshape(b, -1), x_d.reshape(b, -1)], dim=1))

    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """x_d (B, K, 3) with the stitching applied: x_d + delta_exp, and tx, ty added to every
        keypoint's x and y (LivePortrait's ``stitching``)."""
        b, k = x_s.shape[:2]
        delta = self.stitch_delta(x_s, x_d)
        out = x_d + delta[:, :3 * k].reshape(b, k, 3)
        shift = torch.zeros_like(out[:, :1])
        shift[..., :2] = delta[:, 3 * k:3 * k + 2].reshape(b, 1, 2)
        return out + shift

    def retarget_lip(self, x_s: torch.Tensor, lip_close_ratio: torch.Tensor) -> torch.Tensor:
        """Delta (B, K, 3) that moves the lips to the target open ratio; ``lip_close_ratio`` (B, 2)
        is [source ratio, target ratio] (``combined_ratio``; target 0 closes the mouth)."""
        b, k = x_s.shape[:2]
        return self.retarget_mouth(torch.cat([x_s.reshape(b, -1), lip_close_ratio], dim=1)).reshape(b, k, 3)

    def retarget_eyes(self, x_s: torch.Tensor, eye_close_ratio: torch.Tensor) -> torch.Tensor:
        """Delta (B, K, 3) for the eyes; ``eye_close_ratio`` (B, 3) is [source left, source right,
        target] (LivePortrait's ``retarget_eye``; the MLP itself is ``self.retarget_eye``)."""
        b, k = x_s.shape[:2]
        return self.retarget_eye(torch.cat([x_s.reshape(b, -1), eye_close_ratio], dim=1)).reshape(b, k, 3)


def load_stitching_retargeting(weights: str | Path, device: str | torch.device = "cpu",
                               dtype: torch.dtype | None = None, seed: int = 0,
                               name: str = REGISTRY_NAME) -> StitchingRetargetingModule:
    """S in eval mode from ``stitching_retargeting_module.pth`` (each of its three state dicts
    loaded strictly after stripping ``module.``) or ``"random"`` (a forked, seeded RNG)."""
    what = "stitching/retargeting module"
    if str(weights) == RANDOM:
        warn_random(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = StitchingRetargetingModule()
    else:
        state = read_state_dict(weights, f"LivePortrait {what}")
        missing = [key for key in MLP_SIZES if not isinstance(state.get(key), dict)]
        if missing:
            raise ValueError(f"{weights} is not a LivePortrait {what} file: no state dict under "
                             f"{missing} (has {list(state)[:6]})")
        model = StitchingRetargetingModule()
        for key in MLP_SIZES:
            load_strict(getattr(model, key), strip_ddp_prefix(state[key]), weights, f"LivePortrait {what} ({key})")
        model.weight_id = weight_id(weights)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- the ratios the retargeting MLPs take (LivePortrait's retargeting_utils, 203-point landmarks) ---

def distance_ratio(lmk: np.ndarray, a: int, b: int, c: int, d: int, eps: float = 1e-6) -> np.ndarray:
    """|lmk[a] - lmk[b]| / (|lmk[c] - lmk[d]| + eps) per face; ``lmk`` (N, P, 2) -> (N, 1)."""
    top = np.linalg.norm(lmk[:, a] - lmk[:, b], axis=1, keepdims=True)
    return top / (np.linalg.norm(lmk[:, c] - lmk[:, d], axis=1, keepdims=True) + eps)


def eye_close_ratio(lmk: np.ndarray) -> np.ndarray:
    """(N, 2): left and right eye opening over eye width (203-point layout)."""
    return np.concatenate([distance_ratio(lmk, 6, 18, 0, 12), distance_ratio(lmk, 30, 42, 24, 36)], axis=1)


def lip_close_ratio(lmk: np.ndarray) -> np.ndarray:
    """(N, 1): mouth opening over mouth width (203-point layout)."""
    return distance_ratio(lmk, 90, 102, 48, 66)


def combined_ratio(source_ratio: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    """[source ratios..., target] (B, n + 1), the input LivePortrait builds for ``retarget_lip``
    (source lip ratio, target) and ``retarget_eyes`` (source left, right, target)."""
    source_ratio = torch.as_tensor(source_ratio, dtype=torch.float32).reshape(-1, source_ratio.shape[-1])
    target = torch.as_tensor(target, dtype=source_ratio.dtype).reshape(-1, 1).expand(source_ratio.shape[0], 1)
    return torch.cat([source_ratio, target.to(source_ratio.device)], dim=1)
