"""Cosine schedule, samplers, guidance and sliding-window generation."""
import math

import numpy as np
import pytest
import torch

from training.diffusion import Diffusion, cosine_alphas_cumprod, generate, window_joins, window_starts
from training.model import ModelConfig, MotionDenoiser
from training.retired import RetiredOptionError

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


def test_configs_with_the_removed_options_off_still_load():
    """Runs recorded diffusion.shift, parametrization and sigma_data; at their off values they
    change nothing, any other value is refused naming the commit that had them."""
    old = Diffusion.from_config({"steps": 50, "cosine_s": 0.008, "shift": 1.0, "parametrization": "x0",
                                 "sigma_data": 1.0})
    assert torch.equal(old.alphas_cumprod, Diffusion(50).alphas_cumprod)
    for key, value in (("shift", 4.0), ("parametrization", "edm"), ("sigma_data", 0.5)):
        with pytest.raises(RetiredOptionError, match=f"diffusion.{key}=.*5685ff3"):
            Diffusion.from_config({"steps": 50, key: value})


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


class Constant(torch.nn.Module):
    """A network whose output is ``value`` whatever its input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x_t, t, prev_motion, audio, first_window, drop_audio):
        return self.value


def test_denoise_returns_the_network_output_as_x0():
    x_t, v = torch.randn(3, 25, 70), torch.randn(3, 25, 70)
    assert torch.equal(Diffusion(50).denoise(Constant(v), x_t, torch.tensor([0, 20, 49]), None, None, None, None), v)


class Recorder(MotionDenoiser):
    """The real denoiser, recording what each window was conditioned on."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = []

    def forward(self, x_t, t, prev_motion, audio, first_window, drop_audio):
        out = super().forward(x_t, t, prev_motion, audio, first_window, drop_audio)
        self.calls.append((prev_motion.clone(), audio.clone(), first_window.clone(), out.clone()))
        return out


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
        prev, window_audio, first, _ = model.calls[2 * k]
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


@pytest.mark.parametrize("n_frames", [53, 60, 20, 3])
def test_blended_windows_overlap_and_cross_fade(n_frames):
    """With blend, each window starts w_pre frames (5) before the previous one's current part ends,
    is conditioned on the final frames before its start, and fades in over those 5 frames with
    weights 1/6 .. 5/6; the rest of its current part is its own output."""
    torch.manual_seed(0)
    model = Recorder(TINY)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    audio = torch.randn(n_frames, 16)
    blended = generate(model, Diffusion(50), audio, n_steps=2, sampler="ddim",
                       generator=torch.Generator().manual_seed(1))
    starts = window_starts(n_frames, 5, 20, blend=True)
    assert starts[0] == 0 and all(b - a == 15 for a, b in zip(starts, starts[1:]))
    assert starts[-1] + 20 >= n_frames > starts[-1] and len(model.calls) == 2 * len(starts)
    expected = torch.zeros(n_frames, 70)
    for k, start in enumerate(starts):
        prev, window_audio, first, x0 = model.calls[2 * k + 1]  # the last ddim step's prediction
        n = min(20, n_frames - start)
        assert bool(first[0]) == (k == 0)
        assert torch.equal(window_audio[0, 5:5 + n], audio[start:start + n])
        current = x0[0, 5:5 + n]
        if k == 0:
            expected[:n] = current
            continue
        assert torch.equal(prev[0], blended[start - 5:start])  # final frames: no later window touches them
        fade = min(5, n)
        weight = torch.arange(1, fade + 1, dtype=torch.float32)[:, None] / 6
        expected[start:start + fade] = (1 - weight) * expected[start:start + fade] + weight * current[:fade]
        expected[start + fade:start + n] = current[fade:]
    assert torch.allclose(blended, expected, atol=1e-6)


def test_window_joins_are_where_the_output_changes_hands():
    """53 frames, w_pre 5, w_cur 20: blended windows start at 0, 15, 30, 45 and fade over 5 frames,
    so the motion changes source at the step into each fade and out of it; back to back, after
    frames 19 and 39."""
    assert window_starts(53, 5, 20, blend=True) == [0, 15, 30, 45]
    assert window_joins(53, 5, 20, blend=True) == [14, 19, 29, 34, 44, 49]
    assert window_starts(53, 5, 20, blend=False) == [0, 20, 40]
    assert window_joins(53, 5, 20, blend=False) == [19, 39]
    assert window_starts(20, 5, 20, blend=True) == [0] and window_joins(20, 5, 20, blend=True) == []


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
