"""Each benchmark metric's arithmetic against an independent computation.

Frechet distance against the closed form for diagonal Gaussians; smoothness on exactly
interpolable motion with an exactly linear interpolator; Sync-C/D through the real syncnet_python
protocol (face track, crops, MFCC windows, shifts) with a constructed SyncNet whose embeddings
match exactly when audio and video are aligned; Q-Align's weighting on fixed logits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shards.format import SAMPLE_RATE, SAMPLES_PER_FRAME
from training.metrics.frechet import frechet_distance, frechet_distance_of_features, gaussian_stats
from training.metrics.fvd import clips_of, fvd, preprocess
from training.metrics.qalign import PYIQA_WEIGHTS, level_probabilities, one_fps_indices, pyiqa_to_paper, qalign_score
from training.metrics.smoothness import motion_smoothness
from training.metrics.sync import crop_track, sync_metric, track_faces


# ----------------------------------------------------------------------------- Frechet distance

def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # For commuting covariances tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(v1) - sqrt(v2))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)  # 12.25
    # A rotation of both Gaussians leaves the distance unchanged (a full, non-diagonal case).
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_approaches_the_true_one():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal([3.0, 0.0], [2.0, 1.0], size=(20000, 2))
    mu, sigma = gaussian_stats(a)
    assert np.allclose(mu, 0, atol=0.03) and np.allclose(sigma, np.eye(2), atol=0.05)
    assert frechet_distance_of_features(a, b) == pytest.approx(9.0 + 1.0, rel=0.03)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(a[:1])


def test_fvd_plumbing_preprocesses_as_stylegan_v_and_names_its_variant():
    frames = np.random.default_rng(2).integers(0, 256, size=(30, 90, 160, 3), dtype=np.uint8)
    x = preprocess(frames)
    assert x.shape == (3, 30, 224, 224) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert [len(c) for c in clips_of(frames, 25)] == [25] and [len(c) for c in clips_of(frames[:7], 25)] == [7]

    class MeanColour(nn.Module):  # an exactly known feature: each clip's mean colour
        def forward(self, videos):
            return videos.mean(dim=(2, 3, 4))

    rng = np.random.default_rng(3)
    gen = [np.full((50, 32, 32, 3), v, np.uint8) for v in rng.integers(0, 256, size=(4, 1, 1, 1, 3))]
    real = [np.full((50, 32, 32, 3), v, np.uint8) for v in rng.integers(0, 256, size=(4, 1, 1, 1, 3))]
    result = fvd(MeanColour(), gen, real)
    assert result["variant"] == "FVD-25" and result["clips_generated"] == result["clips_real"] == 8
    feats = lambda vs: np.concatenate([[v[0, 0, 0] / 255 * 2 - 1] * 2 for v in vs])  # noqa: E731
    assert result["value"] == pytest.approx(frechet_distance_of_features(feats(gen), feats(real)), rel=1e-4)
    short = fvd(MeanColour(), [g[:8] for g in gen], real)
    assert short["variant"] == "FVD-8" and short["clips_generated"] == 4 and short["clips_real"] == 4 * (50 // 8)


# ----------------------------------------------------------------------------- smoothness

def test_smoothness_of_exactly_interpolable_motion_is_one():
    # A bright square moving 2 px per frame over a ramp, brightness rising by 2 per frame: every
    # odd frame is exactly the average of its even neighbours.
    t = np.arange(9)
    frames = np.zeros((9, 40, 50, 3), np.uint8)
    frames[:] = (np.arange(50)[None, None, :, None] * 2 + 2 * t[:, None, None, None]).astype(np.uint8)
    linear = lambda a, b: (a + b) / 2  # noqa: E731 - an exactly linear interpolator
    assert motion_smoothness(frames, linear) == 1.0
    # Frames that jump (noise) score below 1 by exactly the mean absolute error of the average.
    noisy = np.random.default_rng(4).integers(0, 256, size=(5, 20, 20, 3), dtype=np.uint8)
    average = [((noisy[i].astype(np.float32) / 255 + noisy[i + 2].astype(np.float32) / 255) / 2 * 255)
               .clip(0, 255).astype(np.uint8) for i in (0, 2)]
    mad = np.mean([np.abs(noisy[i + 1].astype(int) - average[k].astype(int)).mean() for k, i in enumerate((0, 2))])
    assert motion_smoothness(noisy, linear) == pytest.approx((255 - mad) / 255, abs=1e-9)
    assert motion_smoothness(noisy, linear) < 0.9


# ----------------------------------------------------------------------------- Sync-C / Sync-D

class IndexedSyncNet(nn.Module):
    """A SyncNet whose lip embedding of a window starting at frame v is the reference audio's MFCC
    window of frame v (frames carry their index as grey level v + 1), and whose audio embedding is
    the MFCC window it is given: aligned audio matches exactly, shifted audio at the shift."""

    def __init__(self, reference_mfcc: np.ndarray):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.reference = torch.from_numpy(reference_mfcc.astype(np.float32))

    def forward_audio(self, mfcc):  # (B, 1, 13, 20)
        return mfcc.flatten(1)

    def forward_video(self, frames):  # (B, 3, 5, 224, 224) BGR 0..255
        first = frames[:, :, 0].mean(dim=(1, 2, 3)).round().long() - 1
        return torch.stack([self.reference[:, 4 * v:4 * v + 20].flatten() for v in first.tolist()])


class FixedBox:
    def detect(self, frame, min_side=0.0):
        return np.array([[60, 40, 180, 170, 1.0]], np.float32)


@pytest.mark.parametrize("k", [-3, 0, 2])
def test_sync_finds_the_offset_of_audio_shifted_by_k_frames(media, k):
    import soundfile as sf

    from filters.syncnet import mfcc_columns

    n = 40
    speech, rate = sf.read(media / "joyvasa_001.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    start = 2 * SAMPLE_RATE
    reference = speech[start:start + n * SAMPLES_PER_FRAME]
    # Audio shifted by k frames: k > 0 plays each sound k frames early (audio leads).
    shifted = speech[start + k * SAMPLES_PER_FRAME:start + (k + n) * SAMPLES_PER_FRAME]
    frames = np.stack([np.full((240, 240, 3), v + 1, np.uint8) for v in range(n)])
    model = IndexedSyncNet(mfcc_columns(reference))
    result = sync_metric(model, FixedBox(), frames, shifted, min_track=10, min_face_size=50)
    assert result["track_frames"] == n and result["reason"] is None
    assert result["offset"] == k
    if k == 0:  # aligned: the distance at the best shift is the pairwise-distance eps only
        assert result["sync_d"] == pytest.approx(0.0, abs=1e-3)
    assert result["sync_c"] > 10.0


def test_face_tracks_follow_syncnet_python_rules():
    box = np.array([[10, 10, 130, 130, 1.0]])
    moved = np.array([[200, 10, 320, 130, 1.0]])
    empty = np.zeros((0, 5))
    detections = [box] * 10 + [empty] * 3 + [box] * 10 + [moved] * 12
    tracks = track_faces(detections, min_track=10, min_face_size=100)
    assert [(t.start, len(t.boxes)) for t in tracks] == [(0, 23), (23, 12)]  # the gap is filled
    assert track_faces(detections, min_track=10, min_face_size=130) == []  # faces too small
    assert track_faces([box] * 5, min_track=10) == []
    frames = np.full((23, 200, 200, 3), 7, np.uint8)
    crops = crop_track(frames, tracks[0])
    assert crops.shape == (23, 224, 224, 3)
    # The box grown by 0.40 runs past the frame's left edge: syncnet_python's grey 110 fills it.
    assert crops[5, 0, 0, 0] == 110 and crops[5, 150, 150, 0] == 7


# ----------------------------------------------------------------------------- Q-Align

def test_qalign_weighting_on_fixed_logits():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0], [-50.0, -50.0, -50.0, -50.0, 50.0]])
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    expected = p @ [1.0, 0.75, 0.5, 0.25, 0.0]
    scores = qalign_score(logits)
    assert scores[0] == pytest.approx(expected) and scores[0] == pytest.approx(0.8630, abs=1e-4)
    assert scores[1] == pytest.approx(0.5) and scores[2] == pytest.approx(0.0, abs=1e-12)
    # pyiqa's 1..5 number of the same logits maps to Q-Align's x 100.
    pyiqa = level_probabilities(logits) @ PYIQA_WEIGHTS
    np.testing.assert_allclose(pyiqa_to_paper(pyiqa), 100 * scores, atol=1e-9)
    assert list(one_fps_indices(60)) == [0, 25, 50] and list(one_fps_indices(3)) == [0]
    with pytest.raises(ValueError, match="levels"):
        qalign_score(np.zeros(4))


class _ScoredFrames:
    """A stand-in for the 16 GB Q-Align model (it cannot run here): frame scores are the frame's
    index, and the video scorer records which frames it was given."""

    metric_name, scores_videos = "qalign", True

    def __init__(self):
        self.video_frames = None

    def frame_scores(self, frames):
        return frames[:, 0, 0, 0].astype(np.float32) / 100 + 1.0  # pyiqa's 1..5 scale

    def video_score(self, frames):
        self.video_frames = frames[:, 0, 0, 0].tolist()
        return 4.0


def test_vqa_is_q_align_s_video_score_of_the_1_fps_frames_and_iqa_the_frame_mean():
    from training.metrics.qalign import quality_scores

    frames = np.zeros((60, 4, 4, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(60)
    model = _ScoredFrames()
    scores = quality_scores(model, frames, iqa_stride=2)
    assert model.video_frames == [0, 25, 50]  # one prompt of the frames at 1 fps
    assert scores["vqa"] == pytest.approx(75.0)  # (4 - 1) / 4 x 100
    assert scores["iqa"] == pytest.approx(pyiqa_to_paper(1.0 + np.arange(0, 60, 2).mean() / 100))
    assert (scores["iqa_frames"], scores["vqa_frames"]) == (30, 3)
    model.scores_videos, model.metric_name = False, "piqe"  # any other metric: VQA = mean of the 1 fps frames
    other = quality_scores(model, frames)
    assert other["vqa"] == pytest.approx(1.0 + np.mean([0, 25, 50]) / 100)


def test_only_q_align_has_a_video_scorer():
    from models.quality import IqaModel

    piqe = IqaModel("piqe", device="cpu")
    assert not piqe.scores_videos
    with pytest.raises(ValueError, match="video scorer"):
        piqe.video_score(np.zeros((2, 8, 8, 3), np.uint8))
