"""Train the audio-to-motion diffusion transformer from the pipeline's shards.

    python -m training.run --shards OUT [--out RUN_DIR] [--resume | --overwrite] [--num-workers N]
                           [--gpus-per-worker G] [key=value ...]
    python -m training.run --out RUN_DIR --validate       # validation loss of RUN_DIR's checkpoint

``OUT`` is the pipeline's output folder (``shards/``, ``stats.json``, ``manifests/``). Defaults live
in ``configs/train.yaml``; any key can be overridden (``model.layers=4 train.max_steps=1000``).
Without ``--num-workers`` one process trains on the local CPU or GPU; ``--num-workers N`` runs N
data-parallel copies under Ray Train, each reading its own share of the shards: one GPU each when
the Ray cluster has GPUs (``--gpus-per-worker`` sets the share, 0 for CPUs), gloo on CPUs
otherwise; each copy logs the node and device it got. ``data.num_workers`` is the DataLoader processes *per* copy. Ray
joins the cluster named by ``RAY_ADDRESS`` (e.g. one started from ``ray_cluster.yaml``) or starts a
local one; rank 0 writes the checkpoint and logs, so on several nodes RUN_DIR and OUT must be on
storage every node sees.

The loop, one optimiser step per batch: diffuse the clean windows to a random step, drop the audio
condition with p = 0.1, predict x0, masked losses, AdamW (or the paper's Adam, ``optim.name``) with warmup then cosine decay, gradient
clipping, EMA. Every ``train.ckpt_every`` steps a checkpoint is written atomically to
``RUN_DIR/checkpoint.pt``; ``--resume`` restores everything it holds (weights, EMA, optimiser,
scheduler, every random generator, each data stream's position, without replaying the batches
already seen) so the resumed run matches a straight one. A fresh run refuses a folder that holds a
checkpoint unless ``--overwrite`` (which removes the previous run's files) is given. Validation
loss (model and EMA) on fixed windows of the held-out split every ``train.val_every`` steps, the
windows chosen once and kept in ``RUN_DIR/validation.pt`` (``training.validation_set``);
TensorBoard logs in ``RUN_DIR/tb``; ``RUN_DIR/summary.json`` at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ema_pytorch import EMA
from omegaconf import DictConfig, OmegaConf

from configs import load_config, save_config, to_dict
from training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, pose_norm, save_checkpoint
from training.data import (DataInputs, DataStreamError, FeatureWidthError, ModelBatch, Position,
                           WindowStream, dataset_multipliers, find_inputs, first_clip, make_loader,
                           resolve_audio_dim, to_model_inputs)
from training import retired
from training.diffusion import Diffusion
from training.losses import LossWeights, motion_losses
from training.model import ModelConfig, MotionDenoiser
from training.retired import drop_retired
from training.normalize import Normalizer
from training.validation_set import CACHE_NAME, run_validation_set

log = logging.getLogger("training")


# ----------------------------------------------------------------------------- configuration

class RunFolderError(ValueError):
    """A fresh run pointed at a folder that holds another run's checkpoint."""


# What a run writes in its folder: --overwrite removes these (and nothing else) first.
RUN_FILES = (CHECKPOINT_NAME, "config.yaml", "summary.json", CACHE_NAME, "tb", "ray")


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run never replaces a checkpoint unasked: with one in ``run_dir`` it needs
    ``--resume`` (continue it) or ``--overwrite`` (start again, the old run's files removed)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other")
    if resume or not (run_dir / CHECKPOINT_NAME).is_file():
        return
    if not overwrite:
        raise RunFolderError(f"{run_dir} holds a checkpoint: pass --resume to continue that run, "
                             f"--overwrite to replace it, or another --out")
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.info("--overwrite: removed the previous run's files from %s", run_dir)


def resolve_config(run_dir: Path, resume: bool, overrides: list[str]) -> DictConfig:
    """A fresh run starts from configs/train.yaml; a resumed one from the run's own config.yaml."""
    if resume:
        if not (run_dir / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"--resume: no {CHECKPOINT_NAME} in {run_dir}")
        return load_config(run_dir / "config.yaml", overrides)
    return load_config("train", overrides)


def lr_factor(step: int, warmup: int, decay_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``decay_steps``, flat after."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


OPTIMIZERS = ("adam", "adamw")


def fused_enabled(cfg: DictConfig, device: torch.device | None) -> bool:
    """``optim.fused``: true, false or auto (torch's fused Adam/AdamW kernels, which exist for CUDA
    and CPU: the same update in one pass over each tensor instead of a loop over tensors)."""
    choice = cfg.optim.get("fused", "auto")
    if choice == "auto":
        return device is None or device.type in ("cuda", "cpu")
    return bool(choice)


def make_optimizer(model: torch.nn.Module, cfg: DictConfig,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """``optim.name``: ``adamw`` with weight decay on matrices and token tables, not on biases and
    norms (as nanoGPT), or ``adam``, the paper's plain Adam (§4.2; ``weight_decay`` unused)."""
    name = cfg.optim.get("name", "adamw")
    params = [p for p in model.parameters() if p.requires_grad]
    options = {"lr": cfg.optim.lr, "betas": tuple(cfg.optim.betas)}
    if fused_enabled(cfg, device):
        options["fused"] = True
    if name == "adam":
        return torch.optim.Adam(params, **options)
    if name != "adamw":
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, **options)


# ----------------------------------------------------------------------------- distributed helpers

def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_state(noise: torch.Generator) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "noise": noise.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], noise: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- one step, validation

def step_loss(model: torch.nn.Module, diffusion: Diffusion, mb: ModelBatch, weights: LossWeights,
              w_pre: int, drop_prob: float, generator: torch.Generator,
              autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Diffuse, drop the audio condition at random, predict x0 and score it."""
    t, x_t = diffusion.training_inputs(mb.x0, generator)
    drop = (torch.rand(mb.x0.shape[0], generator=generator) < drop_prob).to(mb.x0.device)
    return denoised_loss(model, diffusion, mb, t, x_t, drop, weights, w_pre, autocast)


def denoised_loss(model: torch.nn.Module, diffusion: Diffusion, mb: ModelBatch, t: torch.Tensor,
                  x_t: torch.Tensor, drop: torch.Tensor, weights: LossWeights, w_pre: int,
                  autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The motion losses of the network's x0 from ``x_t`` at steps ``t``."""
    with autocast:
        pred = diffusion.denoise(model, x_t, t, mb.x0[:, :w_pre], mb.audio, mb.first, drop)
    return motion_losses(pred, mb.x0, mb.valid, weights)


# Validation windows, steps and noise come from this seed, not the run's, so runs with other
# seeds (or on other datasets with the same validation split) report comparable losses.
VALIDATION_SEED = 0


def validation_steps(n_windows: int, n_steps: int, generator: torch.Generator) -> torch.Tensor:
    """(n_windows,) diffusion steps spread evenly over the schedule, paired with the windows by a
    seeded shuffle. The x0 error grows steeply from the cleanest step to the noisiest, so one
    uniform draw per window would make the validation loss a matter of which steps were drawn."""
    steps = ((torch.arange(n_windows) + 0.5) * n_steps / n_windows).long()
    return steps[torch.randperm(n_windows, generator=generator)]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, diffusion: Diffusion, batches: list[ModelBatch],
                    weights: LossWeights, w_pre: int,
                    autocast: contextlib.AbstractContextManager) -> float:
    """Mean conditional loss per window over the fixed validation batches, with fixed noise and
    steps that cover the schedule evenly (``validation_steps``)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    steps = validation_steps(sum(len(mb.x0) for mb in batches), diffusion.steps, generator)
    total, start = 0.0, 0
    for mb in batches:
        n, device = len(mb.x0), mb.x0.device
        t = steps[start:start + n].to(device)
        start += n
        noise = torch.randn(mb.x0.shape, generator=generator, dtype=mb.x0.dtype).to(device)
        no_drop = torch.zeros(n, dtype=torch.bool, device=device)
        loss, _ = denoised_loss(model, diffusion, mb, t, diffusion.q_sample(mb.x0, t, noise), no_drop,
                                weights, w_pre, autocast)
        total += float(loss) * n
    model.train(was_training)
    return total / max(1, start)


# ----------------------------------------------------------------------------- set-up helpers

@dataclass
class RunInputs:
    """What a run reads before it builds anything: data locations, statistics, the checkpoint."""
    inputs: DataInputs
    stats: dict[str, Any]
    normalizer: Normalizer
    model_cfg: ModelConfig
    multipliers: dict[str, float]
    state: dict[str, Any] | None  # the checkpoint of a resumed run


def load_run_inputs(cfg: DictConfig, shards: str | Path, run_dir: Path, resume: bool) -> RunInputs:
    """Inputs, checked before anything trains (a bad shard or width fails before step 1)."""
    if cfg.train.precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision must be bf16, fp16 or fp32, got {cfg.train.precision!r}")
    if cfg.optim.get("name", "adamw") not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.optim.name!r}")
    inputs = find_inputs(shards, cfg.data.stats, cfg.data.manifest,
                         allow_missing_shards=bool(OmegaConf.select(cfg, "data.allow_missing_shards", default=False)))
    stats = inputs.load_stats()
    state = load_checkpoint(run_dir / CHECKPOINT_NAME) if resume else None
    if state is not None:
        check_resume_compatible(state, cfg)
        if state["stats"] != stats:
            log.warning("stats file changed since the checkpoint; continuing with the checkpoint's stats")
        stats = state["stats"]
    normalizer = Normalizer(stats, pose=pose_norm(cfg))
    cfg.model.audio_dim = resolve_audio_dim(cfg.model.audio_dim, normalizer.audio_dim)
    model_cfg = ModelConfig.from_dict(to_dict(cfg.model))
    first_clip(inputs.shards["train"], "train", normalizer, model_cfg.audio_dim,
               keys=inputs.keys["train"])  # width check
    multipliers = dataset_multipliers(inputs.clips, dict(cfg.data.dataset_weights))
    return RunInputs(inputs, stats, normalizer, model_cfg, multipliers, state)


@dataclass
class Trainer:
    """The trained state and what updates it; everything a checkpoint holds besides the data position."""
    model: MotionDenoiser
    train_model: torch.nn.Module  # the model as the step calls it (DDP-wrapped, compiled)
    diffusion: Diffusion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA
    weights: LossWeights
    noise: torch.Generator  # diffusion steps, noise and condition dropping
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler
    step: int = 0


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX, from Sapphire Rapids on):
    there bf16 matrix products run faster than fp32; without it (AVX2 only) they fall back to a
    generic kernel far slower than fp32 (figures: docs/benchmarks.md)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def cpu_autocast_enabled(cfg: DictConfig) -> bool:
    """``train.cpu_autocast``: true, false or auto (on CPUs with AMX, see :func:`cpu_has_amx`)."""
    choice = cfg.train.get("cpu_autocast", "auto")
    if choice not in (True, False, "auto"):
        raise ValueError(f"train.cpu_autocast must be true, false or auto, got {choice!r}")
    return cpu_has_amx() if choice == "auto" else choice


def autocast_for(cfg: DictConfig, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """(autocast context, whether fp16 needs a gradient scaler). Mixed precision (``train.precision``)
    runs on the GPU, and on the CPU in bf16 where ``train.cpu_autocast`` allows it (by default where
    the CPU has AMX). Weights, optimiser state and losses stay fp32 either way."""
    precision = cfg.train.precision
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype), dtype == torch.float16
    if device.type == "cpu" and precision == "bf16" and cpu_autocast_enabled(cfg):
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16), False
    return contextlib.nullcontext(), False


def compile_enabled(cfg: DictConfig, device: torch.device) -> bool:
    """``train.compile``: true, false or auto (on CUDA only, where the compiled graph pays)."""
    choice = cfg.train.get("compile", False)
    return device.type == "cuda" if choice == "auto" else bool(choice)


def build_trainer(cfg: DictConfig, model_cfg: ModelConfig, device: torch.device, rank: int,
                  world_size: int, state: dict[str, Any] | None) -> Trainer:
    """Model, diffusion, optimiser, EMA: identical on every rank; restored from ``state`` if given."""
    torch.manual_seed(cfg.seed)
    model = MotionDenoiser(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    decay_steps = cfg.optim.decay_steps or cfg.train.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, cfg.optim.warmup_steps, decay_steps, cfg.optim.min_lr_ratio))
    ema = EMA(model, beta=cfg.optim.ema_beta, update_after_step=cfg.optim.ema_update_after,
              update_every=1, include_online_model=False)
    noise = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank, like the data
    autocast, needs_scaler = autocast_for(cfg, device)
    trainer = Trainer(model, model, Diffusion.from_config(cfg.diffusion), optimizer,
                      scheduler, ema, LossWeights.from_dict(to_dict(cfg.loss)), noise, autocast,
                      torch.amp.GradScaler("cuda", enabled=needs_scaler))
    if state is not None:
        restore(trainer, state, cfg, rank, world_size)
    if world_size > 1:
        from ray.train.torch import prepare_model
        trainer.train_model = prepare_model(model, move_to_device=False)
    if compile_enabled(cfg, device):
        trainer.train_model = torch.compile(trainer.train_model)
    return trainer


def restore(trainer: Trainer, state: dict[str, Any], cfg: DictConfig, rank: int, world_size: int) -> None:
    """Continue from a checkpoint: weights, EMA, optimiser, schedule, step and random generators."""
    trainer.model.load_state_dict(state["model"])
    trainer.ema.load_state_dict(state["ema"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step = int(state["step"])
    rngs = state["rng"]
    if len(rngs) != world_size or state["data_state"]["loader_workers"] != cfg.data.num_workers:
        log.warning("resuming with a different number of ranks or loader workers: the run "
                    "continues but will not repeat a straight run exactly")
    set_rng_state(rngs[rank % len(rngs)], trainer.noise)
    log.info("resumed from step %d", trainer.step)


def stream_positions(state: dict[str, Any] | None, cfg: DictConfig, rank: int,
                     world_size: int) -> list[Position] | None:
    """Where this rank's training streams continue: the checkpoint's positions when it was written
    with the same ranks and loader workers; otherwise fresh visits past every recorded one (a
    checkpoint from before positions were recorded starts the streams from their beginning)."""
    if state is None:
        return None
    data_state = state["data_state"]
    saved = data_state.get("positions")
    if saved is None:
        log.warning("the checkpoint records no data-stream positions: the streams start afresh")
        return None
    streams = max(1, int(cfg.data.num_workers))
    if len(saved) == world_size and data_state["loader_workers"] == cfg.data.num_workers:
        return [tuple(p) for p in saved[rank]]
    past = 1 + max((p[0] for rank_positions in saved for p in rank_positions), default=-1)
    return [(past, 0)] * streams


def data_streams(cfg: DictConfig, run: RunInputs, device: torch.device, rank: int, world_size: int,
                 step: int, main_rank: bool, run_dir: Path
                 ) -> tuple[Iterator[dict[str, torch.Tensor]], list[ModelBatch]]:
    """The training batches (continuing where the checkpoint left them) and, on rank 0, the fixed
    validation batches."""
    inputs, normalizer, model_cfg = run.inputs, run.normalizer, run.model_cfg
    stream = WindowStream(inputs.shards["train"], normalizer, model_cfg, cfg.data, "train", cfg.seed,
                          cfg.data.batch_size, rank, world_size, resample=True,
                          consumed_batches=step, multipliers=run.multipliers,
                          split_by_rank=inputs.manifest_path is not None, keys=inputs.keys["train"],
                          positions=stream_positions(run.state, cfg, rank, world_size))
    batches = iter(make_loader(stream, cfg.data.num_workers, pin_memory=device.type == "cuda"))
    val_batches: list[ModelBatch] = []
    if main_rank:
        vset = run_validation_set(run_dir, inputs, normalizer, model_cfg, cfg.data, cfg.train.val_batches,
                                  cfg.data.batch_size, VALIDATION_SEED, reuse=run.state is not None)
        val_batches = [to_model_inputs(b, normalizer, device) for b in vset.batches]
        if not val_batches:
            log.warning("no validation clips: validation loss is skipped")
    return batches, val_batches


def optimizer_step(trainer: Trainer, mb: ModelBatch, cfg: DictConfig, w_pre: int
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One update: loss, backward, clipping, optimiser, schedule, EMA. Returns (loss, parts, grad norm)."""
    loss, parts = step_loss(trainer.train_model, trainer.diffusion, mb, trainer.weights, w_pre,
                            cfg.diffusion.cfg_drop_prob, trainer.noise, trainer.autocast)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.optim.grad_clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    trainer.ema.update()
    trainer.step += 1
    return loss, parts, grad_norm


class RunLog:
    """Rank 0's record of a run: TensorBoard, the progress bar and the loss history."""

    def __init__(self, cfg: DictConfig, run_dir: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.progress = None
        if cfg.train.progress:
            from tqdm import tqdm
            self.progress = tqdm(total=cfg.train.max_steps, initial=step, unit="step", dynamic_ncols=True)
        self.history: dict[str, list] = {"loss": [], "val": []}

    def train_step(self, step: int, loss: torch.Tensor, parts: dict[str, torch.Tensor], lr: float,
                   grad_norm: torch.Tensor, skipped: int) -> None:
        loss_value = float(loss.detach())
        self.history["loss"].append((step, loss_value))
        self.writer.add_scalar("train/loss", loss_value, step)
        for name, value in parts.items():
            self.writer.add_scalar(f"train/{name}", float(value.detach()), step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", float(grad_norm), step)
        self.writer.add_scalar("data/skipped_errors", skipped, step)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", skipped=skipped,
                                      refresh=False)

    def validate(self, trainer: Trainer, val_batches: list[ModelBatch], cfg: DictConfig, w_pre: int) -> None:
        """Validation loss of the model and of its EMA, with fixed steps and noise."""
        step = trainer.step
        val = validation_loss(trainer.model, trainer.diffusion, val_batches, trainer.weights, w_pre,
                              trainer.autocast)
        val_ema = validation_loss(trainer.ema.ema_model, trainer.diffusion, val_batches, trainer.weights,
                                  w_pre, trainer.autocast)
        self.history["val"].append((step, val, val_ema))
        self.writer.add_scalar("val/loss", val, step)
        self.writer.add_scalar("val/loss_ema", val_ema, step)
        log.info("step %d: val loss %.4f (EMA %.4f)", step, val, val_ema)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.writer.close()


def save_run_checkpoint(path: Path, trainer: Trainer, run: RunInputs, cfg: DictConfig,
                        rngs: list[dict[str, Any]], positions: list[list[Position]], world_size: int) -> None:
    save_checkpoint(path, {
        "model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "step": trainer.step, "rng": rngs,
        "data_state": {"batches_consumed": trainer.step, "loader_workers": cfg.data.num_workers,
                       "world_size": world_size, "seed": cfg.seed, "positions": positions},
        "model_config": run.model_cfg.to_dict(), "stats": run.stats, "train_config": to_dict(cfg)})


def run_summary(trainer: Trainer, start_step: int, elapsed: float, world_size: int, skipped: int,
                history: dict[str, list]) -> dict[str, Any]:
    """The run's summary (summary.json); every rank takes part in gathering the digests."""
    digests = gather(param_digest(trainer.model))
    skipped_all = sum(gather(skipped))
    step = trainer.step
    return {"step": step, "steps_run": step - start_step, "elapsed_s": elapsed,
            "steps_per_s": (step - start_step) / elapsed if elapsed > 0 else None,
            "world_size": world_size, "skipped_errors": skipped_all, "param_digests": digests,
            "replicas_identical": len(set(digests)) == 1,
            "final_loss": history["loss"][-1][1] if history["loss"] else None,
            "loss_history": history["loss"], "val_history": history["val"]}


# ----------------------------------------------------------------------------- the loop

def train(cfg: DictConfig, shards: str | Path, run_dir: str | Path, resume: bool = False,
          rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> dict[str, Any]:
    """Train (or continue) one run; returns its summary. Set-up, the loop, checkpoint and log."""
    entered = time.perf_counter()
    run_dir = Path(run_dir)
    main_rank = rank == 0
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = load_run_inputs(cfg, shards, run_dir, resume)
    w_pre = run.model_cfg.w_pre
    trainer = build_trainer(cfg, run.model_cfg, device, rank, world_size, run.state)
    batches, val_batches = data_streams(cfg, run, device, rank, world_size, trainer.step, main_rank, run_dir)
    run_log = RunLog(cfg, run_dir, trainer.step) if main_rank else None
    if run_log is not None and val_batches and trainer.step == 0:
        run_log.validate(trainer, val_batches, cfg, w_pre)  # the untrained baseline

    errors_by_worker: dict[int, int] = {}
    streams = max(1, int(cfg.data.num_workers))
    positions: list[Position] = list(stream_positions(run.state, cfg, rank, world_size) or [(0, 0)] * streams)
    started, start_step, first_step_s = time.time(), trainer.step, None
    trainer.model.train()
    while trainer.step < cfg.train.max_steps:
        batch = next(batches)
        errors_by_worker[int(batch["worker"])] = int(batch["errors"])
        positions[int(batch["stream"])] = tuple(batch["position"])
        mb = to_model_inputs(batch, run.normalizer, device)
        loss, parts, grad_norm = optimizer_step(trainer, mb, cfg, w_pre)
        step, last = trainer.step, trainer.step == cfg.train.max_steps
        if first_step_s is None:
            first_step_s = time.perf_counter() - entered
            log.info("first training step done %.2f s after the start", first_step_s)

        if run_log is not None:
            if step % cfg.train.log_every == 0 or last:
                run_log.train_step(step, loss, parts, trainer.scheduler.get_last_lr()[0], grad_norm,
                                   sum(errors_by_worker.values()))
            if run_log.progress is not None:
                run_log.progress.update(1)
            if val_batches and (step % cfg.train.val_every == 0 or last):
                run_log.validate(trainer, val_batches, cfg, w_pre)
        if step % cfg.train.ckpt_every == 0 or last:
            rngs = gather(rng_state(trainer.noise))  # every rank takes part
            all_positions = gather(positions)
            if main_rank:
                save_run_checkpoint(run_dir / CHECKPOINT_NAME, trainer, run, cfg, rngs, all_positions, world_size)

    elapsed = time.time() - started
    history = run_log.history if run_log is not None else {"loss": [], "val": []}
    summary = run_summary(trainer, start_step, elapsed, world_size, sum(errors_by_worker.values()), history)
    summary["first_step_s"] = first_step_s
    summary["workers"] = gather(worker_description(rank, device))
    if run_log is not None:
        run_log.close()
        tmp = run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(run_dir / "summary.json")
    return summary


def worker_description(rank: int, device: torch.device) -> dict[str, Any]:
    """What one training process got: its node, device and, on a GPU, which one."""
    described = {"rank": rank, "node": platform.node(), "pid": os.getpid(), "device": str(device),
                 "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
        described["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return described


def check_resume_compatible(state: dict[str, Any], cfg: DictConfig) -> None:
    """The model and diffusion of a resumed run must be the checkpoint's."""
    saved = state["train_config"]
    saved_model = ModelConfig.from_dict(state["model_config"]).to_dict()
    if saved_model != ModelConfig.from_dict(to_dict(cfg.model)).to_dict():
        raise CheckpointError(f"model config {to_dict(cfg.model)} differs from the checkpoint's "
                              f"{state['model_config']}")
    saved_diffusion = saved.get("diffusion")
    if saved_diffusion is not None:  # a checkpoint's removed options, when off, change nothing
        saved_diffusion = drop_retired(saved_diffusion, retired.DIFFUSION, "diffusion")
    if saved_diffusion != to_dict(cfg.diffusion):
        raise CheckpointError(f"diffusion config {to_dict(cfg.diffusion)} differs from the "
                              f"checkpoint's {saved.get('diffusion')}")
    saved_pose_norm = pose_norm(OmegaConf.create(saved))
    if saved_pose_norm != pose_norm(cfg):
        raise CheckpointError(f"data.pose_norm {pose_norm(cfg)} differs from the checkpoint's "
                              f"{saved_pose_norm}: resume with data.pose_norm={saved_pose_norm}")


# ----------------------------------------------------------------------------- Ray Train

def _ray_worker(config: dict[str, Any]) -> None:
    """One data-parallel copy under Ray Train (the process group is already set up)."""
    import ray
    import ray.train
    from ray.train.torch import get_device

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank, device = context.get_world_rank(), get_device()
    log.info("worker %d of %d: node %s, device %s, GPUs %s, CPUs %s", rank, context.get_world_size(),
             platform.node(), device, ray.get_gpu_ids(),
             ray.get_runtime_context().get_assigned_resources().get("CPU"))
    cfg = OmegaConf.create(config["cfg"])
    summary = train(cfg, config["shards"], config["run_dir"], config["resume"],
                    rank=rank, world_size=context.get_world_size(), device=device)
    ray.train.report({k: summary[k] for k in ("step", "replicas_identical", "skipped_errors")})


def worker_resources(cluster: dict[str, float], num_workers: int,
                     gpus_per_worker: float | None) -> dict[str, float]:
    """Each copy's share: ``gpus_per_worker`` when given (0: CPUs only), else one GPU when the
    cluster (``ray.cluster_resources()``) has any, else one CPU. Where the driver runs plays no
    part: a CPU-only head node still trains on the cluster's GPUs."""
    gpus = float(cluster.get("GPU", 0.0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus > 0 else 0.0
    if gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if gpus_per_worker and gpus < gpus_per_worker * num_workers:
        log.warning("%d workers of %g GPU each need %g GPUs and the cluster has %g now: they wait "
                    "for the autoscaler or other jobs", num_workers, gpus_per_worker,
                    gpus_per_worker * num_workers, gpus)
    return {"CPU": 1.0, "GPU": gpus_per_worker} if gpus_per_worker else {"CPU": 1.0}


def scaling_for(num_workers: int, gpus_per_worker: float | None) -> Any:
    """Ray Train's scaling for ``num_workers`` copies on the cluster Ray is connected to."""
    import ray
    from ray.train import ScalingConfig

    resources = worker_resources(ray.cluster_resources(), num_workers, gpus_per_worker)
    use_gpu = resources.get("GPU", 0.0) > 0
    log.info("%d workers, each with %s (%s)", num_workers, resources, "GPUs" if use_gpu else "CPUs only")
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def train_with_ray(cfg: DictConfig, shards: str | Path, run_dir: Path, resume: bool,
                   num_workers: int, gpus_per_worker: float | None = None) -> dict[str, Any]:
    import ray
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        from configs.ray_session import (ADDRESS_ENV, DEFAULT_CONNECT_TIMEOUT_S, address_from_environment,
                                         join_cluster, start_local)

        timeout_s = float(OmegaConf.select(cfg, "ray.connect_timeout_s", default=DEFAULT_CONNECT_TIMEOUT_S))
        if address_from_environment():  # a cluster named by RAY_ADDRESS, e.g. under `ray job submit`
            join_cluster(None, timeout_s, ADDRESS_ENV, log_to_driver=True)  # RayAddressError: exit 2
        else:  # a new local Ray, never the cluster the machine last recorded
            start_local(include_dashboard=False, log_to_driver=True)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": to_dict(cfg), "shards": str(shards) if "://" in str(shards) else str(Path(shards).resolve()),
                           "run_dir": str(run_dir.resolve()), "resume": resume},
        scaling_config=scaling_for(num_workers, gpus_per_worker),
        run_config=RunConfig(name="train", storage_path=str((run_dir / "ray").resolve())),
    )
    trainer.fit()
    return json.loads((run_dir / "summary.json").read_text())


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="pipeline output folder (shards/, stats.json); optional with "
                                         "--validate when the run folder holds its validation set")
    parser.add_argument("--out", default="runs/train", help="run folder (checkpoint, logs, config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --out that holds a checkpoint, removing that run's files")
    parser.add_argument("--validate", action="store_true",
                        help="only print the validation loss of --out's checkpoint (model and EMA)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-parallel copies under Ray Train (default: one local process)")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="GPUs for each Ray Train copy (0: CPUs only; default: 1 when the Ray "
                             "cluster has GPUs, else 0)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    if args.shards is None and not args.validate:
        parser.error("--shards is required")
    return args


def validate_checkpoint(run_dir: Path, shards: str | Path | None = None) -> dict[str, Any]:
    """Validation loss of the run's checkpoint (model and EMA) on the run's own validation windows:
    the cached ones (``RUN_DIR/validation.pt``) when they fit, else chosen again from ``shards``."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    cfg = OmegaConf.create(state["train_config"])
    normalizer = Normalizer(state["stats"], pose=pose_norm(cfg))
    model_cfg = ModelConfig.from_dict(state["model_config"])
    inputs = None
    if shards is not None:
        inputs = find_inputs(shards, cfg.data.stats, cfg.data.manifest,
                             allow_missing_shards=bool(OmegaConf.select(cfg, "data.allow_missing_shards",
                                                                        default=False)))
    vset = run_validation_set(run_dir, inputs, normalizer, model_cfg, cfg.data, cfg.train.val_batches,
                              cfg.data.batch_size, VALIDATION_SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = build_trainer(cfg, model_cfg, device, 0, 1, state)
    batches = [to_model_inputs(b, normalizer, device) for b in vset.batches]
    if not batches:
        raise DataStreamError(f"the validation set of {run_dir} holds no windows")
    losses = [validation_loss(m, trainer.diffusion, batches, trainer.weights, model_cfg.w_pre, trainer.autocast)
              for m in (trainer.model, trainer.ema.ema_model)]
    return {"step": trainer.step, "val_loss": losses[0], "val_loss_ema": losses[1],
            "windows": sum(len(b.x0) for b in batches), "clips": len(vset.keys)}


def run_from_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, train (or validate), and return the run's summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    run_dir = Path(args.out)
    if args.validate:
        result = validate_checkpoint(run_dir, args.shards)
        print(json.dumps(result))
        return result
    cfg = resolve_config(run_dir, args.resume, args.overrides)
    check_run_folder(run_dir, args.resume, args.overwrite)
    if args.num_workers is not None:
        if args.num_workers < 1:
            raise ValueError("--num-workers must be >= 1")
        summary = train_with_ray(cfg, args.shards, run_dir, args.resume, args.num_workers,
                                 args.gpus_per_worker)
    else:
        summary = train(cfg, args.shards, run_dir, args.resume)
    log.info("done: step %d, final loss %s, %s skipped shard/sample errors", summary["step"],
             summary["final_loss"], summary["skipped_errors"])
    return summary


def main(argv: list[str] | None = None) -> int:
    """The console entry point: bad inputs end with one clear line and exit status 2."""
    try:
        run_from_args(argv)
    except (CheckpointError, FeatureWidthError, DataStreamError, FileNotFoundError, KeyError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
