"""What the model stages share: which device, dtype and weights each model uses.

Weights come from the registry (``models.weights``) unless the config names a path, or
``weights.random`` asks for random weights of the official architecture (tests and smoke runs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from models.weights import RANDOM, weights_for

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def device_for(cfg: Mapping[str, Any]) -> str:
    """``models.device``; ``auto`` is the GPU Ray gave this worker, if any, else the CPU."""
    device = str(cfg["models"].get("device", "auto"))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def dtype_for(name: str | None, device: str) -> torch.dtype | None:
    """Model dtype: float32 on CPU; ``auto`` keeps float32 weights everywhere (autocast does fp16)."""
    if name in (None, "auto") or device == "cpu":
        return None
    return DTYPES[name]


def weights_choice(cfg: Mapping[str, Any], model_key: str, registry_name: str) -> Path | str:
    """The file (or ``"random"``) a model stage loads."""
    if cfg["weights"]["random"]:
        return RANDOM
    choice = cfg["models"][model_key].get("weights")
    return weights_for(registry_name, choice, cfg["weights"].get("dir"))
