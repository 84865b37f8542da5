"""The sampling options of every command that generates motion (sample, animate, evaluate, benchmark).

The defaults are the settings the published quality figures use (``bench/learn.py``, docs/training.md):
DDIM with 10 steps and classifier-free guidance scale 2, the EMA weights, windows cross-faded where
they overlap. The device is the GPU when torch sees one, else the CPU.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from training.diffusion import SAMPLERS, Diffusion

DEFAULT_SAMPLER = "ddim"
DEFAULT_DDIM_STEPS = 10
DEFAULT_CFG_SCALE = 2.0


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SamplingOptions:
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: DEFAULT_DDIM_STEPS for ddim, every trained step for ddpm
    cfg_scale: float = DEFAULT_CFG_SCALE
    seed: int = 0
    ema: bool = True
    blend: bool = True
    device: str = "cpu"

    @property
    def n_steps(self) -> int | None:
        """The step count handed to the sampler."""
        if self.steps is None and self.sampler == "ddim":
            return DEFAULT_DDIM_STEPS
        return self.steps

    def check(self, diffusion: Diffusion) -> None:
        """Raise ValueError for a sampler and step count the checkpoint's schedule cannot run."""
        diffusion.timesteps(self.sampler, self.n_steps)

    def describe(self) -> str:
        return f"{self.sampler} {self.n_steps or 'all'} steps, CFG {self.cfg_scale:g}"


def add_arguments(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """Add --sampler, --steps, --cfg-scale, [--seed], --no-ema, --no-blend and --device."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                       help="ddim (default) or ddpm (ancestral, every trained step)")
    group.add_argument("--steps", type=int, default=None,
                       help=f"ddim steps (default {DEFAULT_DDIM_STEPS}); ddpm runs every trained step")
    group.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG_SCALE,
                       help=f"classifier-free guidance scale (default {DEFAULT_CFG_SCALE:g}); 1: none")
    if seed:
        group.add_argument("--seed", type=int, default=0)
    group.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    group.add_argument("--no-blend", action="store_true",
                       help="windows back to back, as in the paper, instead of cross-faded where they overlap")
    group.add_argument("--device", default=default_device(), help="default: cuda when available, else cpu")


def from_args(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                           seed=getattr(args, "seed", 0), ema=not args.no_ema, blend=not args.no_blend,
                           device=args.device)


def to_argv(options: SamplingOptions) -> list[str]:
    """The command-line form of ``options`` (for a command that runs another one)."""
    argv = ["--sampler", options.sampler, "--cfg-scale", str(options.cfg_scale), "--seed", str(options.seed),
            "--device", options.device]
    if options.steps is not None:
        argv += ["--steps", str(options.steps)]
    return argv + (["--no-ema"] if not options.ema else []) + (["--no-blend"] if not options.blend else [])
