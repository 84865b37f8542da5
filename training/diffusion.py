"""Gaussian diffusion over motion windows: cosine schedule, x0 prediction, DDPM/DDIM sampling, CFG.

The schedule is the cosine one of Nichol & Dhariwal (s = 0.008) with 50 steps, as the public JoyVASA
code trains; step 0 is the least noisy. The network predicts the clean sample ``x0_hat`` directly
(paper §3.3.2); training and both samplers work with it.

The samplers:

* ``ddpm``: ancestral sampling through every training step (what the public code runs);
* ``ddim``: deterministic (eta = 0) over any decreasing subset of the steps, for faster previews.

Classifier-free guidance mixes a conditional and an audio-dropped prediction,
``x0 = x0_uncond + scale * (x0_cond - x0_uncond)`` (paper eq. 3); scale 1 is the plain conditional.

:func:`generate` turns a whole utterance into motion with sliding windows (paper §3.4): each window
of ``w_cur`` frames is conditioned on the previous ``w_pre`` generated frames and their audio; the
first uses the start tokens; the last is padded with zero (mean) audio and truncated.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from training import retired
from training.model import MotionDenoiser
from training.retired import drop_retired

SAMPLERS = ("ddpm", "ddim")


def cosine_alphas_cumprod(steps: int, s: float = 0.008) -> np.ndarray:
    """alpha-bar_t for t = 0..steps-1 from the cosine schedule (betas clipped at 0.999)."""
    grid = np.arange(steps + 1, dtype=np.float64) / steps
    f = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1.0 - betas)


class Diffusion:
    """The forward process, its posterior and the two samplers; holds no learned state."""

    def __init__(self, steps: int = 50, cosine_s: float = 0.008):
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        self.steps = steps
        self.cosine_s = cosine_s
        ab = cosine_alphas_cumprod(steps, cosine_s)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        betas = 1.0 - ab / ab_prev

        def as_tensor(values: np.ndarray) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32)

        self.alphas_cumprod = as_tensor(ab)
        self.alphas_cumprod_prev = as_tensor(ab_prev)
        self.betas = as_tensor(betas)
        # q(x_{t-1} | x_t, x0) = N(coef_x0 * x0 + coef_xt * x_t, posterior_var)
        self.posterior_coef_x0 = as_tensor(betas * np.sqrt(ab_prev) / (1.0 - ab))
        self.posterior_coef_xt = as_tensor((1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab))
        self.posterior_var = as_tensor(betas * (1.0 - ab_prev) / (1.0 - ab))

    @classmethod
    def from_config(cls, cfg: Any) -> "Diffusion":
        """From a run's ``diffusion`` config (a mapping; removed options must be off)."""
        cfg = drop_retired(cfg, retired.DIFFUSION, "diffusion")
        return cls(int(cfg.get("steps", 50)), float(cfg.get("cosine_s", 0.008)))

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast against ``like`` (B, ...)."""
        out = values.to(like.device)[t.to(like.device)]
        return out.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse clean ``x0`` to step ``t``: sqrt(ab) x0 + sqrt(1 - ab) noise."""
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def training_inputs(self, x0: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform steps and the noised motion for one training batch: (t (B,), x_t)."""
        t = torch.randint(0, self.steps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return t, self.q_sample(x0, t, noise)

    def denoise(self, model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, prev_motion: torch.Tensor,
                audio: torch.Tensor, first_window: torch.Tensor, drop_audio: torch.Tensor) -> torch.Tensor:
        """``x0_hat`` from the network's output (arguments as :meth:`MotionDenoiser.forward`)."""
        return model(x_t, t, prev_motion, audio, first_window, drop_audio)

    def timesteps(self, sampler: str, n_steps: int | None) -> list[int]:
        """The decreasing steps a sampler visits."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        if sampler == "ddpm":
            if n_steps not in (None, self.steps):
                raise ValueError(f"the ddpm sampler runs all {self.steps} trained steps; "
                                 f"use sampler='ddim' for {n_steps} steps")
            return list(range(self.steps - 1, -1, -1))
        n_steps = self.steps if n_steps is None else n_steps
        if not 1 <= n_steps <= self.steps:
            raise ValueError(f"ddim n_steps must be in 1..{self.steps}, got {n_steps}")
        return sorted({int(round(s)) for s in np.linspace(self.steps - 1, 0, n_steps)}, reverse=True)

    @torch.no_grad()
    def predict_x0(self, model: MotionDenoiser, x_t: torch.Tensor, t: int, prev_motion: torch.Tensor,
                   audio: torch.Tensor, first_window: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """x0_hat at step ``t``, with classifier-free guidance when ``cfg_scale != 1``."""
        batch = x_t.shape[0]
        steps = torch.full((batch,), t, dtype=torch.long, device=x_t.device)
        keep = torch.zeros(batch, dtype=torch.bool, device=x_t.device)
        if cfg_scale == 1.0:
            return self.denoise(model, x_t, steps, prev_motion, audio, first_window, keep)
        both = self.denoise(model, x_t.repeat(2, 1, 1), steps.repeat(2), prev_motion.repeat(2, 1, 1),
                            audio.repeat(2, 1, 1), first_window.repeat(2), torch.cat([keep, ~keep]))
        cond, uncond = both[:batch], both[batch:]
        return uncond + cfg_scale * (cond - uncond)

    @torch.no_grad()
    def sample(self, model: MotionDenoiser, prev_motion: torch.Tensor, audio: torch.Tensor,
               first_window: torch.Tensor, n_steps: int | None = None, sampler: str = "ddpm",
               cfg_scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample one batch of windows: (B, w_pre + w_cur, motion_dim) in normalised units."""
        cfg = model.cfg
        shape = (audio.shape[0], cfg.window, cfg.motion_dim)
        x = torch.randn(shape, generator=generator).to(audio.device)
        steps = self.timesteps(sampler, n_steps)
        for i, t in enumerate(steps):
            x0 = self.predict_x0(model, x, t, prev_motion, audio, first_window, cfg_scale).float()
            if i == len(steps) - 1:
                break  # the last step's prediction is the sample
            if sampler == "ddpm":
                t_vec = torch.full((shape[0],), t, dtype=torch.long)
                mean = self._at(self.posterior_coef_x0, t_vec, x0) * x0 \
                    + self._at(self.posterior_coef_xt, t_vec, x) * x
                noise = torch.randn(shape, generator=generator).to(x.device)
                x = mean + self._at(self.posterior_var, t_vec, x).sqrt() * noise
            else:
                ab = float(self.alphas_cumprod[t])
                ab_next = float(self.alphas_cumprod[steps[i + 1]])
                eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
                x = math.sqrt(ab_next) * x0 + math.sqrt(1.0 - ab_next) * eps
        return x0


def window_fade(w_pre: int, w_cur: int) -> int:
    """Frames by which consecutive windows overlap and cross-fade: ``w_pre``, or less where the
    window is too short to keep its next context (``w_pre`` frames before the next start) in its own
    current part."""
    return max(0, min(w_pre, w_cur - w_pre))


def window_starts(n_frames: int, w_pre: int, w_cur: int, blend: bool) -> list[int]:
    """The frame where each window's current part starts: back to back (the paper's windows), or,
    with ``blend``, each :func:`window_fade` frames before the previous window's current part ends."""
    stride = w_cur - (window_fade(w_pre, w_cur) if blend else 0)
    starts = [0]
    while starts[-1] + w_cur < n_frames:
        starts.append(starts[-1] + stride)
    return starts


def window_joins(n_frames: int, w_pre: int, w_cur: int, blend: bool) -> list[int]:
    """Frames ``i`` where the step ``i -> i + 1`` passes from one window's output to another's (or into
    or out of a cross-fade): where a badly stitched motion jumps."""
    fade = window_fade(w_pre, w_cur) if blend else 0
    joins = set()
    for start in window_starts(n_frames, w_pre, w_cur, blend)[1:]:
        joins.add(start - 1)
        if fade:
            joins.add(min(start + fade, n_frames) - 1)
    return sorted(j for j in joins if 0 <= j < n_frames - 1)


@torch.no_grad()
def generate(model: MotionDenoiser, diffusion: Diffusion, audio_feats: torch.Tensor | np.ndarray,
             n_steps: int | None = None, sampler: str = "ddpm", cfg_scale: float = 1.0,
             generator: torch.Generator | None = None, blend: bool = True) -> torch.Tensor:
    """Motion for a whole utterance: normalised audio features (T, audio_dim) -> (T, motion_dim).

    Sliding windows (paper §3.4): each generates ``w_pre + w_cur`` frames given the ``w_pre`` frames
    before its current part and their audio, and contributes its current part. Without ``blend``
    the current parts follow back to back, as in the paper. A model that does not continue its
    context exactly then starts each window with a jump, and a briefly trained one does. With
    ``blend`` (the default) each window starts :func:`window_fade` frames (25) before the previous
    one's current part ends, and over those frames its output is cross-faded in with a linear ramp,
    so the motion passes from one window's output to the next without a step, for a third more
    windows. (Cross-fading the window's re-generated context frames instead leaves the step between
    the end of that context and the start of its current part inside the output; measured join
    velocities: docs/sampling.md.)

    The result is in normalised units (undo with ``Normalizer.denormalize``) on the CPU. Windows are
    generated one after another, so memory does not grow with ``T`` beyond the (T, 70) output.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    audio = torch.as_tensor(np.asarray(audio_feats), dtype=torch.float32)
    if audio.ndim != 2 or audio.shape[1] != cfg.audio_dim:
        raise ValueError(f"audio features must be (T, {cfg.audio_dim}), got {tuple(audio.shape)}")
    n_frames = audio.shape[0]
    motion = torch.zeros(n_frames, cfg.motion_dim)
    fade = window_fade(cfg.w_pre, cfg.w_cur) if blend else 0
    ramp = (torch.arange(1, fade + 1, dtype=torch.float32) / (fade + 1))[:, None]
    was_training = model.training
    model.eval()
    try:
        for index, start in enumerate(window_starts(n_frames, cfg.w_pre, cfg.w_cur, blend)):
            n = min(cfg.w_cur, n_frames - start)
            first = index == 0
            window_audio = torch.zeros(cfg.window, cfg.audio_dim)
            prev = torch.zeros(cfg.w_pre, cfg.motion_dim)
            if not first:
                window_audio[:cfg.w_pre] = audio[start - cfg.w_pre:start]
                prev = motion[start - cfg.w_pre:start].clone()
            window_audio[cfg.w_pre:cfg.w_pre + n] = audio[start:start + n]
            x0 = diffusion.sample(
                model, prev[None].to(device), window_audio[None].to(device),
                torch.tensor([first], device=device), n_steps=n_steps, sampler=sampler,
                cfg_scale=cfg_scale, generator=generator)[0].float().cpu()
            current = x0[cfg.w_pre:cfg.w_pre + n]
            overlap = 0 if first else min(fade, n)
            motion[start:start + overlap] = torch.lerp(motion[start:start + overlap], current[:overlap],
                                                       ramp[:overlap])
            motion[start + overlap:start + n] = current[overlap:]
    finally:
        model.train(was_training)
    return motion
