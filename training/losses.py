"""The training losses of paper §3.3.2, each computed once and masked per frame.

``total = simple + w_vel * velocity + w_smooth * smooth + w_exp * expression + w_pose * pose``
(eq. 8 and one term of ours), where

* simple: squared error of the predicted clean motion (eq. 4);
* velocity: squared error of the frame-to-frame differences (eq. 5);
* smooth: squared second difference (acceleration) of the prediction alone (eq. 6);
* expression: squared error on the 63 expression dims only (eq. 7), so they count twice in total;
* pose: squared error on the 7 pose dims (scale, translation, angles) only, so they count twice
  too. Without it (``w_pose`` 0, the paper's loss) the 63 expression dims outweigh the 7 pose dims
  in every shared layer and a trained model can learn to ignore its pose inputs; why the default
  is 1: docs/training.md.

Frames outside the mask (the previous part of a first window, frames past a truncation) carry no
target; a difference term counts only where every frame it touches is valid. Each term is the mean
over valid frames and over dims, so the weights compare terms of like scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shards.vector import EXP_DIMS, POSE_DIMS


@dataclass(frozen=True)
class LossWeights:
    simple: float = 1.0
    velocity: float = 1.0
    smooth: float = 0.1
    expression: float = 1.0
    pose: float = 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LossWeights":
        return cls(**{k: float(v) for k, v in values.items()})


def masked_mean(sq_err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, D) squared errors over frames where mask (B, L) is set, and over D."""
    mask = mask.to(sq_err.dtype)
    denom = (mask.sum() * sq_err.shape[-1]).clamp(min=1.0)
    return (sq_err * mask[..., None]).sum() / denom


def motion_losses(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pred, target (B, L, D); mask (B, L) bool -> (weighted total, {term: unweighted value})."""
    pred, target = pred.float(), target.float()
    mask = mask.bool()
    vel_mask = mask[:, 1:] & mask[:, :-1]
    acc_mask = mask[:, 2:] & mask[:, 1:-1] & mask[:, :-2]
    pred_vel = pred[:, 1:] - pred[:, :-1]
    target_vel = target[:, 1:] - target[:, :-1]
    pred_acc = pred[:, 2:] - 2 * pred[:, 1:-1] + pred[:, :-2]
    parts = {
        "simple": masked_mean((pred - target) ** 2, mask),
        "velocity": masked_mean((pred_vel - target_vel) ** 2, vel_mask),
        "smooth": masked_mean(pred_acc ** 2, acc_mask),
        "expression": masked_mean((pred[..., EXP_DIMS] - target[..., EXP_DIMS]) ** 2, mask),
        "pose": masked_mean((pred[..., POSE_DIMS] - target[..., POSE_DIMS]) ** 2, mask),
    }
    total = (weights.simple * parts["simple"] + weights.velocity * parts["velocity"]
             + weights.smooth * parts["smooth"] + weights.expression * parts["expression"]
             + weights.pose * parts["pose"])
    return total, parts
