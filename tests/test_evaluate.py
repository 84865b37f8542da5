"""The evaluation CLI on validation shards built from real templates and real speech."""
import json

import numpy as np
import pytest
import torch

from shards.vector import motion_to_vector
from tests.test_sample import random_model, write_checkpoint
from training.evaluate import main
from training.model import ModelConfig
from training.motion_metrics import GROUPS, band_std, diversity, dynamics, group_l2
from training.sample import EXIT_BAD_INPUT, load_generator

TINY = ModelConfig(audio_dim=16, width=48, layers=2, heads=4, w_pre=5, w_cur=20, dropout=0.0)
LIP_ROWS = (6, 12, 14, 17, 19, 20)  # LivePortrait's lip keypoints


@pytest.fixture(scope="module")
def dataset(media, tmp_path_factory):
    from tests.motion_fixtures import compute_stats, fixture_clips, write_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    clips = (fixture_clips(media, audio_dim=16, n_clips=2, split="train")
             + fixture_clips(media, audio_dim=16, n_clips=2, split="val", start_index=2))
    write_dataset(root / "data", clips, clips_per_shard=3)
    ckpt = write_checkpoint(root / "checkpoint.pt", random_model(TINY, 0), compute_stats(clips))
    return root, clips, ckpt


def test_report_compares_generated_with_real_validation_motion(dataset, capsys):
    root, clips, ckpt = dataset
    out = root / "report"
    args = ["--checkpoint", str(ckpt), "--shards", str(root / "data"), "--seeds", "2",
            "--sampler", "ddim", "--steps", "2", "--cfg-scale", "1.5", "--max-frames", "60",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| lip |" in printed and "| expression |" in printed and "| pose |" in printed
    assert sorted(p.name for p in out.iterdir()) == ["dynamics.png", "example.png", "report.json",
                                                     "report.md"]
    report = json.loads((out / "report.json").read_text())
    val = [c for c in clips if c["meta"]["split"] == "val"]
    assert [c["key"] for c in report["clips"]] == [c["key"] for c in val]
    assert report["n_frames"] == 120 and report["groups"]["lip"] == [
        3 * r + a for r in LIP_ROWS for a in range(3)]

    # recompute the first clip independently
    generator = load_generator(ckpt)
    real = motion_to_vector(val[0]["motion"])[:60]
    feat = np.asarray(val[0]["audio_feat"], np.float16).astype(np.float32)[:60]
    runs = [generator.motion(feat, steps=2, sampler="ddim", cfg_scale=1.5, seed=s) for s in (0, 1)]
    lip = [3 * r + a for r in LIP_ROWS for a in range(3)]
    lip_l2 = np.mean([np.linalg.norm(g[:, lip] - real[:, lip], axis=1).mean() for g in runs])
    angle_l2 = np.mean([np.linalg.norm(g[:, 67:70] - real[:, 67:70], axis=1).mean() for g in runs])
    clip = report["clips"][0]
    assert clip["l2"]["lip"] == pytest.approx(lip_l2, rel=1e-4)
    assert clip["l2"]["angles"] == pytest.approx(angle_l2, rel=1e-4)
    real_velocity = np.linalg.norm(np.diff(real[:, :63], axis=0), axis=1).mean()
    assert clip["real"]["expression"]["velocity_mean"] == pytest.approx(real_velocity, rel=1e-4)
    spread = np.linalg.norm(runs[0][:, :63] - runs[1][:, :63], axis=1).mean()
    assert clip["diversity"]["expression"] == pytest.approx(spread, rel=1e-4) and spread > 0
    summary = report["summary"]
    assert summary["l2"]["lip"] == pytest.approx(np.mean([c["l2"]["lip"] for c in report["clips"]]))
    assert "| lip |" in (out / "report.md").read_text()


def test_metrics_on_known_sequences():
    t = np.arange(50, dtype=np.float64)[:, None]
    real = np.zeros((50, 70))
    gen = np.zeros((50, 70))
    gen[:, 67] = 3.0                       # pitch off by 3 degrees
    gen[:, 3 * 6 + 1] = 0.4                # lip keypoint 6, y off by 0.4
    l2 = group_l2(gen, real)
    assert l2["angles"] == pytest.approx(3.0) and l2["lip"] == pytest.approx(0.4)
    assert l2["expression"] == pytest.approx(0.4) and l2["translation"] == 0.0
    assert l2["pose"] == pytest.approx(3.0)
    moving = np.tile(0.5 * t ** 2, (1, 70))  # constant acceleration 1 per frame^2
    dyn = dynamics(moving)
    assert dyn["scale"]["acceleration_mean"] == pytest.approx(1.0)
    assert dyn["scale"]["jerk_mean"] == pytest.approx(0.0, abs=1e-9)
    assert dyn["lip"]["acceleration_mean"] == pytest.approx(np.sqrt(18))
    assert diversity([gen, real])["angles"] == pytest.approx(3.0)
    assert np.isnan(diversity([gen])["angles"])
    assert set(GROUPS) >= {"expression", "lip", "pose"}


def test_band_std_puts_slow_motion_and_jitter_apart():
    t = np.arange(500, dtype=np.float64)
    slow = np.sin(2 * np.pi * t / 200)                       # an 8 s sway: std 0.71
    jitter = 0.1 * np.random.default_rng(0).normal(size=500)  # frame-to-frame noise: std 0.1
    seq = np.zeros((500, 70))
    seq[:, 0], seq[:, 1], seq[:, 2] = slow, jitter, slow + jitter
    slow_std, fast_std = band_std(seq)
    assert slow_std[0] == pytest.approx(slow.std(), rel=0.03) and fast_std[0] < 0.03
    assert fast_std[1] == pytest.approx(0.1, rel=0.1) and slow_std[1] < 0.03
    assert slow_std[2] == pytest.approx(slow_std[0], rel=0.05)
    assert fast_std[2] == pytest.approx(fast_std[1], rel=0.05)
    assert slow_std[3] == fast_std[3] == 0.0


def test_bad_inputs_exit_2(dataset, tmp_path, capsys):
    root, clips, ckpt = dataset
    assert main(["--checkpoint", str(ckpt), "--shards", str(tmp_path), "--out", str(tmp_path / "r")]) \
        == EXIT_BAD_INPUT
    assert "no shards" in capsys.readouterr().err
    from tests.motion_fixtures import write_dataset

    write_dataset(tmp_path / "train_only", [c for c in clips if c["meta"]["split"] == "train"])
    assert main(["--checkpoint", str(ckpt), "--shards", str(tmp_path / "train_only"),
                 "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "r")]) == EXIT_BAD_INPUT
    assert "no validation clips" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--shards", str(root / "data")]) \
        == EXIT_BAD_INPUT
    assert "not found" in capsys.readouterr().err
