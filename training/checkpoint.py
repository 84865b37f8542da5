"""Checkpoints: written atomically, complete enough to resume exactly, self-describing for inference.

A checkpoint is one ``torch.save`` of a dict:

* ``model``: the network's state dict; ``ema``: the ema-pytorch EMA state dict (``ema_model.*``);
* ``optimizer``, ``scheduler``: their state dicts; ``step``: optimiser steps taken;
* ``rng``: per rank, the python, numpy, torch (and CUDA) generator states and the diffusion-noise
  generator's state;
* ``data_state``: the data streams' place: batches consumed, loader workers, ranks, seed and
  ``positions`` (per rank, per stream: shard visit and windows drawn in it, ``training.data``);
* ``model_config`` (dict), ``stats`` (the normalisation statistics used), ``train_config`` (the
  effective config as a plain dict), ``format_version``.

The file appears under its final name only once fully written (temporary name, then ``os.replace``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from training.diffusion import Diffusion
from training.model import ModelConfig, MotionDenoiser
from training.normalize import Normalizer

FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "ema", "optimizer", "scheduler", "step", "rng", "data_state",
                 "model_config", "stats", "train_config")
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"refusing to save a checkpoint without {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({**state, "format_version": FORMAT_VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint (got {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by training.run")
    return state


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA model's own state dict out of an ema-pytorch EMA state dict."""
    prefix = "ema_model."
    weights = {k[len(prefix):]: v for k, v in ema_state.items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError("the checkpoint's 'ema' entry holds no ema_model weights")
    return weights


def build_model(model_config: dict[str, Any], weights: dict[str, torch.Tensor]) -> MotionDenoiser:
    try:
        cfg = ModelConfig.from_dict(dict(model_config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint model_config is not usable: {exc}") from exc
    model = MotionDenoiser(cfg)
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"weights do not match model_config {cfg}: missing {result.missing_keys[:8]}, "
                              f"unexpected {result.unexpected_keys[:8]}")
    return model


def pose_norm(train_config: DictConfig) -> str:
    """How the run normalised pose (``data.pose_norm``; checkpoints from before it: min-max)."""
    return str(train_config.get("data", {}).get("pose_norm", "minmax"))


def load_for_inference(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
                       ) -> tuple[MotionDenoiser, Diffusion, dict[str, Any], DictConfig]:
    """(model in eval mode on ``device``, its Diffusion, the normalisation stats, the train config).

    Raises CheckpointError when keys are missing or the weights, config and stats disagree.
    """
    state = load_checkpoint(path)
    weights = ema_weights(state["ema"]) if use_ema else state["model"]
    try:
        model = build_model(state["model_config"], weights)
    except RuntimeError as exc:  # shape mismatches from load_state_dict
        raise CheckpointError(f"weights do not match model_config: {exc}") from exc
    cfg = OmegaConf.create(state["train_config"])
    normalizer = Normalizer(state["stats"], pose=pose_norm(cfg))
    if normalizer.audio_dim is not None and normalizer.audio_dim != model.cfg.audio_dim:
        raise CheckpointError(f"stats audio width {normalizer.audio_dim} != model audio_dim "
                              f"{model.cfg.audio_dim}")
    diffusion = Diffusion.from_config(cfg.get("diffusion", {}))
    return model.to(device).eval(), diffusion, state["stats"], cfg
