"""Every command that generates motion parses the same sampling options with the same defaults, and
those defaults are the settings the published quality figures were measured with."""
import json
from pathlib import Path

import pytest
import torch

from training import animate, benchmark, evaluate, sample, sampling
from training.diffusion import Diffusion

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    sample: ["--checkpoint", "c.pt", "--audio", "a.wav", "--out", "m.pkl"],
    animate: ["--image", "p.jpg", "--out", "v.mp4"],
    evaluate: ["--checkpoint", "c.pt", "--shards", "OUT"],
    benchmark: ["--checkpoint", "c.pt", "--test-set", "t.csv", "--out", "b"],
}


@pytest.mark.parametrize("command", list(REQUIRED), ids=lambda m: m.__name__)
def test_each_command_has_the_shared_defaults(command):
    options = sampling.from_args(command.build_parser().parse_args(REQUIRED[command]))
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert options == sampling.SamplingOptions(device=expected_device)
    assert (options.sampler, options.n_steps, options.cfg_scale) == ("ddim", 10, 2.0)
    flags = command.build_parser().parse_args(REQUIRED[command] + [
        "--sampler", "ddpm", "--cfg-scale", "1.5", "--no-ema", "--no-blend", "--device", "cpu"])
    chosen = sampling.from_args(flags)
    assert (chosen.sampler, chosen.n_steps, chosen.cfg_scale, chosen.ema, chosen.blend, chosen.device) \
        == ("ddpm", None, 1.5, False, False, "cpu")
    chosen.check(Diffusion(50))  # ddpm without --steps runs every trained step


def test_the_defaults_are_the_measured_settings():
    """bench/learn.py's published paper-model figures were sampled with these settings."""
    paper = json.loads((ROOT / "bench/results/learn.json").read_text())["paper"]
    assert paper["sampler"] == {"sampler": sampling.DEFAULT_SAMPLER, "steps": sampling.DEFAULT_DDIM_STEPS}
    assert paper["mouth_corr"] == paper["mouth_corr_by_cfg_scale"][str(sampling.DEFAULT_CFG_SCALE)]


def test_options_round_trip_through_the_command_line():
    """benchmark hands its options to animate as flags; nothing is lost on the way."""
    options = sampling.SamplingOptions(sampler="ddim", steps=4, cfg_scale=3.0, seed=7, ema=False,
                                       blend=False, device="cpu")
    args = animate.build_parser().parse_args(REQUIRED[animate] + sampling.to_argv(options))
    assert sampling.from_args(args) == options
    with pytest.raises(ValueError, match="ddpm"):
        sampling.SamplingOptions(sampler="ddpm", steps=4).check(Diffusion(50))
