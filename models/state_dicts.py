"""Official state-dict files: read weights-only and loaded strictly, with errors that name the file.

Every loader of an official checkpoint goes through these, so a wrong, truncated or foreign file
always fails the same way: ``FileNotFoundError`` for a missing file, ``ValueError`` naming the file
for one that is not a readable state dict or does not match the architecture key for key.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

DDP_PREFIX = "module."  # what DistributedDataParallel puts before every key


def strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a leading ``module.`` from every key (checkpoints saved from DistributedDataParallel)."""
    return {key.removeprefix(DDP_PREFIX): value for key, value in state.items()}


def read_state_dict(path: str | Path, what: str) -> dict:
    """``torch.load`` (weights only) of a state-dict file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (see `python -m models.weights verify`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or pickled objects
        raise ValueError(f"{path} is not a readable weights-only torch file: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")  # noqa: TRY004
    return state


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``load_state_dict(strict=True)``; a mismatch becomes a ValueError naming the file."""
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a {what} state dict:\n{e}") from None
