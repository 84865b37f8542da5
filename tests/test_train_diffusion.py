"""Cosine schedule, samplers, guidance and sliding-window generation."""
import math

import numpy as np
import pytest
import torch

from training.diffusion import Diffusion, cosine_alphas_cumprod, generate
from training.model import ModelConfig, MotionDenoiser

TINY = ModelConfig(audio_dim=16, width=64, layers=2, heads=4, w_pre=5, w_cur=20, dropout=0.0)


def test_cosine_schedule_matches_its_definition():
    ab = cosine_alphas_cumprod(50, 0.008)
    f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ab[0] == pytest.approx(f(1) / f(0), rel=1e-9)
    assert ab[24] == pytest.approx(f(25) / f(0), rel=1e-9)
    assert np.all(np.diff(ab) < 0) and ab[-1] < 1e-3 and ab[0] > 0.998
    d = Diffusion(50)
    x0, noise = torch.ones(2, 3, 4), torch.randn(2, 3, 4)
    x_t = d.q_sample(x0, torch.tensor([0, 49]), noise)
    assert torch.allclose(x_t[0], math.sqrt(ab[0]) * x0[0] + math.sqrt(1 - ab[0]) * noise[0])
    assert torch.allclose(x_t[1], noise[1], atol=0.05)  # the last step is almost pure noise


def test_timesteps_per_sampler():
    d = Diffusion(50)
    assert d.timesteps("ddpm", None) == list(range(49, -1, -1))
    with pytest.raises(ValueError, match="ddim"):
        d.timesteps("ddpm", 10)
    steps = d.timesteps("ddim", 10)
    assert len(steps) == 10 and steps[0] == 49 and steps[-1] == 0 and steps == sorted(steps, reverse=True)
    assert d.timesteps("ddim", 1) == [49]
    with pytest.raises(ValueError, match="sampler"):
        d.timesteps("euler", None)


class FixedTarget(torch.nn.Module):
    """A denoiser that always predicts the same clean window, whatever the noise."""

    def __init__(self, cfg: ModelConfig, target: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.target = torch.nn.Parameter(target, requires_grad=False)

    def forward(self, x_t, t, prev_motion, audio, first_window, drop_audio):
        return self.target.expand(x_t.shape[0], -1, -1) + 0 * drop_audio.float().view(-1, 1, 1)


@pytest.mark.parametrize("sampler,n_steps", [("ddpm", None), ("ddim", 50), ("ddim", 7)])
def test_samplers_land_on_the_predicted_clean_sample(sampler, n_steps):
    target = torch.randn(1, TINY.window, TINY.motion_dim)
    out = Diffusion(50).sample(FixedTarget(TINY, target), torch.zeros(1, 5, 70), torch.zeros(1, 25, 16),
                               torch.tensor([True]), n_steps=n_steps, sampler=sampler,
                               generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)


def test_ddpm_posterior_mean_interpolates_x0_and_xt():
    d = Diffusion(50)
    t = torch.tensor([10])
    ab, ab_prev, beta = d.alphas_cumprod[10], d.alphas_cumprod_prev[10], d.betas[10]
    assert float(d.posterior_coef_x0[10]) == pytest.approx(float(beta * ab_prev.sqrt() / (1 - ab)))
    x0 = torch.randn(1, 3, 2)
    x_t = d.q_sample(x0, t, torch.zeros_like(x0))  # on the noise-free path the posterior mean
    mean = d.posterior_coef_x0[10] * x0 + d.posterior_coef_xt[10] * x_t
    assert torch.allclose(mean, ab_prev.sqrt() * x0, atol=1e-5)  # stays on it, one step earlier


def test_classifier_free_guidance_combines_conditional_and_unconditional():
    torch.manual_seed(0)
    model = MotionDenoiser(TINY).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)
    d = Diffusion(50)
    x = torch.randn(2, 25, 70)
    prev, audio, first = torch.randn(2, 5, 70), torch.randn(2, 25, 16), torch.tensor([False, True])
    cond = model(x, torch.full((2,), 7), prev, audio, first, torch.zeros(2, dtype=torch.bool))
    uncond = model(x, torch.full((2,), 7), prev, audio, first, torch.ones(2, dtype=torch.bool))
    guided = d.predict_x0(model, x, 7, prev, audio, first, cfg_scale=2.5)
    assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-5)
    assert torch.allclose(d.predict_x0(model, x, 7, prev, audio, first, cfg_scale=1.0), cond, atol=1e-6)


class Recorder(MotionDenoiser):
    """The real denoiser, recording what each window was conditioned on."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = []

    def forward(self, x_t, t, prev_motion, audio, first_window, drop_audio):
        self.calls.append((prev_motion.clone(), audio.clone(), first_window.clone()))
        return super().forward(x_t, t, prev_motion, audio, first_window, drop_audio)


@pytest.mark.parametrize("n_frames", [53, 60, 3])
def test_generate_slides_windows_over_the_utterance(n_frames):
    torch.manual_seed(0)
    model = Recorder(TINY)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    audio = torch.randn(n_frames, 16)
    out = generate(model, Diffusion(50), audio, n_steps=2, sampler="ddim", cfg_scale=1.0,
                   generator=torch.Generator().manual_seed(1), blend=False)
    assert out.shape == (n_frames, 70) and torch.isfinite(out).all()
    n_windows = math.ceil(n_frames / 20)
    assert len(model.calls) == 2 * n_windows  # two ddim steps per window
    for k in range(n_windows):
        prev, window_audio, first = model.calls[2 * k]
        start = 20 * k
        n = min(20, n_frames - start)
        assert bool(first[0]) == (k == 0)
        assert torch.equal(window_audio[0, 5:5 + n], audio[start:start + n])
        assert torch.count_nonzero(window_audio[0, 5 + n:]) == 0  # the last window is zero-padded
        if k > 0:  # context: the previous window's last generated frames and their audio
            assert torch.equal(prev[0], out[start - 5:start])
            assert torch.equal(window_audio[0, :5], audio[start - 5:start])
    again = generate(model, Diffusion(50), audio, n_steps=2, sampler="ddim",
                     generator=torch.Generator().manual_seed(1), blend=False)
    assert torch.equal(out, again)
    # Blending changes only the w_pre frames before each window boundary.
    blended = generate(model, Diffusion(50), audio, n_steps=2, sampler="ddim",
                       generator=torch.Generator().manual_seed(1))
    inside = torch.ones(n_frames, dtype=torch.bool)
    for k in range(1, n_windows):
        inside[20 * k - 5:20 * k] = False
    assert torch.equal(blended[inside], out[inside])


def test_generate_with_guidance_and_ddpm_is_seeded_and_checks_width():
    torch.manual_seed(0)
    model = MotionDenoiser(TINY)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    audio = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    diffusion = Diffusion(10)  # fewer steps keep the ancestral sampler quick here
    a = generate(model, diffusion, audio, sampler="ddpm", cfg_scale=2.0,
                 generator=torch.Generator().manual_seed(3))
    b = generate(model, diffusion, audio, sampler="ddpm", cfg_scale=2.0,
                 generator=torch.Generator().manual_seed(3))
    c = generate(model, diffusion, audio, sampler="ddpm", cfg_scale=1.0,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert model.training  # restored after sampling
    with pytest.raises(ValueError, match=r"\(T, 16\)"):
        generate(model, Diffusion(50), audio[:, :8])
