"""The trainer learns the synthetic world's audio-to-motion mapping (bench/learn.py, reduced).

A small model trained by the real ``training.run`` on shards of the synthetic world (real speech,
lip dims following the speech envelope, everything else independent of the audio), sampled on
held-out speech through ``training.sample``'s path: generated lip motion must follow the speech
(correlation >= 0.6 at the default CFG scale) and the audio-dropped prediction must not
(|r| <= 0.2). A broken conditioning path, attention mask, schedule or sampler fails here.
"""
import numpy as np

from bench.learn import REDUCED, evaluate, in_range, std_ratio, train_on_world
from tests.synthetic_world import build_world

STEPS = 350


def test_trained_model_moves_the_mouth_with_held_out_speech(media, tmp_path):
    world = build_world(tmp_path / "world", media, n_train=16, n_val=2, n_held_out=2,
                        seconds=(10.0, 40.0), seed=0)
    summary = train_on_world(world, tmp_path / "run", REDUCED + ["train.val_every=350",
                                                                 "train.val_batches=2"], STEPS)
    (_, val0, _), (_, val_end, _) = summary["val_history"][0], summary["val_history"][-1]
    assert val_end < val0
    result = evaluate(tmp_path / "run" / "checkpoint.pt", world, {"sampler": "ddim", "steps": 10},
                      scales=(2.0,), full=False)
    print(result)
    assert result["mouth_corr"] >= 0.6, result
    assert abs(result["null_corr"]) <= 0.2, result


def test_std_ratio_averages_clips_and_seeds_before_the_range_check():
    """One still sample and one twice as lively average to the world's std: the ratio is taken over
    every generated clip of every seed, not per seed."""
    rng = np.random.default_rng(0)
    truth = np.full(3, 2.0)
    lively = [rng.normal(size=(4000, 3)) * 4.0 for _ in range(2)]  # std 4: ratio 2 each
    still = [np.zeros((4000, 3)) for _ in range(2)]                 # ratio 0 each
    pooled = std_ratio([lively, still], truth)
    np.testing.assert_allclose(pooled, 1.0, atol=0.03)
    assert in_range(std_ratio([still], truth)) == 0.0
    assert in_range(np.array([0.49, 0.5, 2.0, 2.01])) == 0.5
