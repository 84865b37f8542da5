"""Sliding windows join without a jump, for a model trained briefly on real motion.

The model is trained by the real trainer (``training.run.train``) on shards made from the real
LivePortrait templates paired with features of real speech (``tests.motion_fixtures``), then
generates 16 s of motion (ten windows) for other speech. The velocity across each window
boundary must lie within the range of the velocities inside windows.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import load_config
from training.diffusion import window_joins
from training.motion_metrics import boundary_jumps
from training.sample import load_generator

W_PRE, W_CUR = 10, 40
N_FRAMES = 400


@pytest.fixture(scope="module")
def trained(media, tmp_path_factory) -> Path:
    from tests.motion_fixtures import fixture_clips, write_dataset
    from training.run import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stitch")
    clips = (fixture_clips(media, audio_dim=16, n_clips=6, split="train")
             + fixture_clips(media, audio_dim=16, n_clips=1, split="val", start_index=6))
    write_dataset(root / "data", clips)
    cfg = load_config("train", [
        "train.max_steps=150", "train.threads=1", "train.progress=false", "train.ckpt_every=1000",
        "train.val_every=1000", "model.audio_dim=16", "model.width=64", "model.layers=2",
        "model.heads=4", f"model.w_pre={W_PRE}", f"model.w_cur={W_CUR}", "model.dropout=0.0",
        "diffusion.steps=20", "data.num_workers=0", "optim.lr=3e-4", "optim.warmup_steps=20",
        "optim.ema_update_after=10", "optim.ema_beta=0.99"])
    train(cfg, root / "data", root / "run")
    return root / "run" / "checkpoint.pt"


@pytest.fixture(scope="module")
def other_speech_features(media) -> np.ndarray:
    from tests.motion_fixtures import speech, speech_features

    return speech_features(speech(media / "joyvasa_001.wav", N_FRAMES, offset_s=3.0), N_FRAMES, 16)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_windows_stitch_without_a_jump(trained, other_speech_features, seed):
    generator = load_generator(trained)
    assert (generator.model.cfg.w_pre, generator.model.cfg.w_cur) == (W_PRE, W_CUR)
    motion = generator.motion(other_speech_features, sampler="ddpm", cfg_scale=2.0, seed=seed)
    plain = generator.motion(other_speech_features, sampler="ddpm", cfg_scale=2.0, seed=seed, blend=False)
    assert motion.shape == (N_FRAMES, 70) and np.isfinite(motion).all()

    normalised = generator.normalizer.normalize(motion)  # every dim on a comparable scale
    joins = window_joins(N_FRAMES, W_PRE, W_CUR, blend=True)
    at_boundary, interior = boundary_jumps(normalised, joins)
    plain_boundary, _ = boundary_jumps(generator.normalizer.normalize(plain),
                                       window_joins(N_FRAMES, W_PRE, W_CUR, blend=False))
    report = (f"boundary {np.round(at_boundary, 3)}; interior max {interior.max():.3f}, p95 "
              f"{np.percentile(interior, 95):.3f}, median {np.median(interior):.3f}; "
              f"without blending boundary median {np.median(plain_boundary):.3f}")
    assert len(at_boundary) == len(joins) and len(joins) >= 2 * (N_FRAMES // W_CUR - 1)
    assert interior.max() > 0, report  # the motion moves
    assert at_boundary.max() <= interior.max(), report
    assert np.median(at_boundary) <= np.percentile(interior, 95), report


def test_boundary_check_sees_a_jump():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(scale=0.01, size=(120, 70)), axis=0)
    at_boundary, interior = boundary_jumps(smooth, [39, 79])
    assert len(at_boundary) == 2 and len(interior) == 117
    jumped = smooth.copy()
    jumped[80:] += 0.5  # a step between the second and third window
    at_boundary, interior = boundary_jumps(jumped, [39, 79])
    assert at_boundary[1] > interior.max()
