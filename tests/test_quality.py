"""The quality filter through real pyiqa metrics (the offline ones) on real frames."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from filters.quality import AGGREGATES, MetricUnavailableError, QualityScorer, sample_indices


@pytest.fixture(scope="module")
def frames(media) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(media / "lp_d20.mp4"), width=192, height=192)
    return reader.get_batch(list(range(0, 160, 10))).asnumpy()  # 16 frames through the clip


def blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def test_piqe_end_to_end_scores_blur_worse(frames):
    scorer = QualityScorer("piqe", n_frames=8, device="cpu")
    assert scorer.lower_better is True
    sharp, per_frame = scorer.score(frames)
    assert per_frame.shape == (8,) and np.isfinite(per_frame).all()
    soft, _ = scorer.score(blurred(frames, 3.0))
    assert soft > sharp + 10  # PIQE: lower is better, blur is worse


def test_entropy_direction_and_face_crops(frames):
    scorer = QualityScorer("entropy", n_frames=4, aggregate="median", device="cpu")
    assert scorer.lower_better is False
    crops = np.ascontiguousarray(frames[:, 40:168, 40:168])  # any (N, H, W, 3) uint8, e.g. face crops
    sharp, per_frame = scorer.score(crops)
    flat, _ = scorer.score(np.full_like(crops, 90))
    assert per_frame.shape == (4,) and sharp > 5.0 and flat == pytest.approx(0.0, abs=1e-3)


def test_aggregation_modes(frames):
    # Each frame a little softer than the one before, so every mode gives a different score.
    mixed = np.stack([frames[0]] + [cv2.GaussianBlur(f, (0, 0), 0.1 * i) for i, f in enumerate(frames) if i])
    results = {}
    for mode, reduce in AGGREGATES.items():
        score, per_frame = QualityScorer("piqe", n_frames=16, aggregate=mode, device="cpu").score(mixed)
        assert score == pytest.approx(float(reduce(per_frame)), rel=1e-6)
        results[mode] = score
    assert results["min"] < results["p10"] < results["median"] < results["p90"] < results["max"]
    assert results["min"] < results["mean"] < results["max"]


def test_frames_are_sampled_evenly():
    np.testing.assert_array_equal(sample_indices(45, 8), [0, 6, 13, 19, 25, 31, 38, 44])
    np.testing.assert_array_equal(sample_indices(5, 8), np.arange(5))
    with pytest.raises(ValueError, match="no frames"):
        sample_indices(0, 8)


def test_batched_scores_equal_one_by_one(frames):
    batched = QualityScorer("piqe", n_frames=8, device="cpu")
    single = QualityScorer("piqe", n_frames=8, device="cpu", batch_size=1)
    np.testing.assert_allclose(batched.score(frames)[1], single.score(frames)[1], rtol=1e-5)


def test_qalign_without_weights_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(MetricUnavailableError) as info:
        QualityScorer("qalign", device="cpu")
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "'qalign'" in message and "q-future/one-align" in message and "piqe" in message


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="no-reference metric"):
        QualityScorer("not_a_metric")
    with pytest.raises(ValueError, match="no-reference metric"):
        QualityScorer("ssim")  # full-reference: needs a reference image
    with pytest.raises(ValueError, match="aggregate"):
        QualityScorer("piqe", aggregate="mode")
    scorer = QualityScorer("piqe", device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(np.zeros((2, 32, 32, 3), np.float32))
