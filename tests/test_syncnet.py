"""SyncNet: official keys, the released file's missing BatchNorm counters, syncnet_python's scoring."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import python_speech_features
import soundfile as sf
import torch

from filters.syncnet import score_embeddings, sync_scores
from models.syncnet import LipTower2d, SyncNet, load_syncnet
from pipeline.media import REPO_ROOT

REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "syncnet_v2.keys.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[SyncNet, Path, dict[str, torch.Tensor]]:
    """A random SyncNet with perturbed weights and BatchNorm statistics, saved as the released file
    is (no ``num_batches_tracked``)."""
    model = load_syncnet("random")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.02)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("sync") / "syncnet_v2.model"
    torch.save(state, path)
    return model, path, state


def test_state_dict_equals_official_manifest():
    if not REFERENCE.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{REFERENCE} missing; CI=true requires it")
        pytest.skip(f"{REFERENCE} missing")
    shapes = {k: list(v.shape) for k, v in SyncNet().state_dict().items()}
    assert shapes == json.loads(REFERENCE.read_text())


def test_round_trip_without_batchnorm_counters(saved):
    original, path, state = saved
    assert not any(k.endswith("num_batches_tracked") for k in state)
    loaded = load_syncnet(path)
    for key, value in state.items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 3, 5, 224, 224, generator=gen) * 255
    mfcc = torch.randn(1, 1, 13, 20, generator=gen) * 10
    with torch.no_grad():
        v0, v1 = original.forward_video(frames), loaded.forward_video(frames)
        a0, a1 = original.forward_audio(mfcc), loaded.forward_audio(mfcc)
    assert v0.shape == a0.shape == (1, 1024)
    assert torch.equal(v0, v1) and torch.equal(a0, a1)


def test_loader_accepts_only_the_missing_counters(saved, tmp_path):
    original, _, state = saved
    torch.save(original.state_dict(), tmp_path / "full.model")  # with counters: fine too
    load_syncnet(tmp_path / "full.model")
    bad = {
        "missing.model": ({k: v for k, v in state.items() if k != "netcnnlip.0.weight"}, "netcnnlip.0.weight"),
        "extra.model": ({**state, "netextra.weight": torch.zeros(1)}, "netextra.weight"),
        "shape.model": ({**state, "netfcaud.3.weight": torch.zeros(512, 512)}, "netfcaud.3.weight"),
    }
    for name, (content, key) in bad.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_syncnet(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_syncnet(tmp_path / "absent.model")


def brute_force_scores(video: np.ndarray, audio: np.ndarray, vshift: int):
    """syncnet_python's calc_pdist and evaluate, spelled out loop by loop."""
    n, d = video.shape
    padded = np.concatenate([np.zeros((vshift, d)), audio, np.zeros((vshift, d))])
    dists = np.array([[np.linalg.norm(video[i] - padded[i + j] + 1e-6) for j in range(2 * vshift + 1)]
                      for i in range(n)])
    mean = dists.mean(0)
    best = int(np.argmin(mean))
    median = float(np.median(mean))
    return vshift - best, median - mean[best], mean[best], median - dists[:, best], mean


def test_lip_tower_as_2d_cnn_equals_the_3d_one(saved):
    """The export form of the lip tower (perturbed weights and BatchNorm statistics) gives the
    official 3D tower's embeddings."""
    model, _, _ = saved
    frames = torch.rand(3, 3, 5, 224, 224, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        official, flat = model.forward_video(frames), LipTower2d(model)(frames)
    assert flat.shape == official.shape == (3, 1024)
    # float32 convolutions in another order (3D vs 2D kernels, CPU-dependent algorithms): equal to
    # a few ulps of the embeddings' scale, not of each element.
    scale = float(official.abs().max())
    torch.testing.assert_close(flat, official, atol=2e-6 * scale, rtol=1e-4)
    assert official.std() > 1e-2  # not trivially equal


def test_scoring_math_matches_brute_force():
    rng = np.random.default_rng(0)
    video, audio = rng.normal(size=(2, 23, 16)).astype(np.float32)
    offset, conf, dist, frame_conf, mean = brute_force_scores(video, audio, vshift=5)
    r = score_embeddings(video, audio, vshift=5)
    assert r.offset == offset
    assert r.conf == pytest.approx(conf, rel=1e-4) and r.dist == pytest.approx(dist, rel=1e-5)
    np.testing.assert_allclose(r.frame_conf, frame_conf, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.dists, mean, rtol=1e-5)
    assert r.dists.shape == (11,) and r.frame_conf.shape == (23,)


def test_scoring_a_subsample_of_windows_matches_brute_force():
    """Lip embeddings of every 3rd window against audio embeddings of all windows."""
    rng = np.random.default_rng(1)
    video, audio = rng.normal(size=(2, 23, 16)).astype(np.float32)
    windows = np.arange(0, 23, 3)
    _, _, _, _, all_dists = brute_force_scores(video, audio, vshift=5)
    r = score_embeddings(video[windows], audio, vshift=5, windows=windows)
    padded = np.pad(audio, ((5, 5), (0, 0)))
    dists = np.array([[np.linalg.norm(video[i] - padded[i + j] + 1e-6) for j in range(11)] for i in windows])
    np.testing.assert_allclose(r.dists, dists.mean(0), rtol=1e-5)
    assert r.offset == 5 - int(dists.mean(0).argmin()) and r.frame_conf.shape == (len(windows),)
    assert not np.allclose(r.dists, all_dists, rtol=1e-3)  # a different (sub)sample, a different mean
    with pytest.raises(ValueError, match="windows"):
        score_embeddings(video[windows], audio, vshift=5, windows=windows[:-1])


@pytest.mark.parametrize("lag", [-6, -1, 0, 2, 5])
def test_scoring_recovers_a_known_shift(lag):
    """Audio that lags the video by ``lag`` frames (audio[m] == video[m - lag]) gives offset == -lag."""
    rng = np.random.default_rng(lag + 10)
    n, dim = 60, 32
    video = rng.normal(size=(n, dim)).astype(np.float32)
    audio = rng.normal(size=(n, dim)).astype(np.float32)
    m = np.arange(n)
    valid = (m - lag >= 0) & (m - lag < n)
    audio[valid] = video[m[valid] - lag] + 0.05 * rng.normal(size=(valid.sum(), dim))
    r = score_embeddings(video, audio, vshift=15)
    assert r.offset == -lag
    assert r.conf > 1.0
    assert r.dist == pytest.approx(r.dists.min()) and r.dists.argmin() == 15 + lag
    # Windows whose true partner exists score well above the median; the rest do not.
    partner = (m + lag >= 0) & (m + lag < n)
    assert r.frame_conf[partner].min() > 5.0
    assert (~partner).sum() == abs(lag) and np.all(r.frame_conf[~partner] < 5.0)


def test_sync_scores_follow_syncnet_python_on_real_media(saved, media):
    """Our function on RGB crops and float audio == syncnet_python's steps on BGR frames and int16 audio."""
    model = saved[0]
    n_frames = 9
    cap = cv2.VideoCapture(str(media / "lp_d20.mp4"))
    bgr = []
    for _ in range(n_frames):
        ok, frame = cap.read()
        assert ok
        bgr.append(cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA))
    cap.release()
    bgr = np.stack(bgr)
    samples, rate = sf.read(media / "joyvasa_001.wav", dtype="int16", frames=n_frames * 640 + 1000)
    assert rate == 16000

    # syncnet_python: (1, 3, T, H, W) BGR floats; MFCC of the int16 samples; windows of 5 frames and
    # columns 4v..4v+20; min(frames, samples // 640) - 5 windows.
    im = torch.from_numpy(bgr.transpose(3, 0, 1, 2)[None].astype(float)).float()
    cc = torch.from_numpy(python_speech_features.mfcc(samples, rate).T[None, None].astype(float)).float()
    n_windows = min(n_frames, len(samples) // 640) - 5
    with torch.no_grad():
        video = model.forward_video(torch.cat([im[:, :, v:v + 5] for v in range(n_windows)]))
        audio = model.forward_audio(torch.cat([cc[:, :, :, 4 * v:4 * v + 20] for v in range(n_windows)]))
    expected = score_embeddings(video, audio, vshift=2)

    rgb = np.ascontiguousarray(bgr[..., ::-1])
    result = sync_scores(model, rgb, samples.astype(np.float32) / 32768.0, vshift=2, batch_size=3)
    assert len(result.frame_conf) == n_windows == 4
    assert result.offset == expected.offset
    assert result.conf == pytest.approx(expected.conf, rel=1e-3, abs=1e-4)
    assert result.dist == pytest.approx(expected.dist, rel=1e-4)
    np.testing.assert_allclose(result.dists, expected.dists, rtol=1e-4)
    np.testing.assert_allclose(result.frame_conf, expected.frame_conf, rtol=1e-3, atol=1e-4)
    # A window stride runs the lip tower on windows 0, 2 only, against every audio window.
    strided = sync_scores(model, rgb, samples.astype(np.float32) / 32768.0, vshift=2, window_stride=2)
    every_other = score_embeddings(video[::2], audio, vshift=2, windows=np.arange(0, n_windows, 2))
    np.testing.assert_allclose(strided.dists, every_other.dists, rtol=1e-4)
    assert strided.offset == every_other.offset and len(strided.frame_conf) == 2
    # Channel order matters: the same crops given as BGR score differently.
    swapped = sync_scores(model, bgr, samples.astype(np.float32) / 32768.0, vshift=2)
    assert not np.allclose(swapped.dists, expected.dists, rtol=1e-4)


def test_sync_scores_reject_bad_input(saved):
    model = saved[0]
    crops = np.zeros((5, 224, 224, 3), np.uint8)
    with pytest.raises(ValueError, match="too short"):
        sync_scores(model, crops, np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        sync_scores(model, crops.astype(np.float32), np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="224"):
        sync_scores(model, np.zeros((8, 256, 256, 3), np.uint8), np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="mono"):
        sync_scores(model, np.zeros((8, 224, 224, 3), np.uint8), np.zeros((16000, 2), np.float32))
    with pytest.raises(ValueError, match="embeddings"):
        score_embeddings(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="window_stride"):
        sync_scores(model, np.zeros((8, 224, 224, 3), np.uint8), np.zeros(16000, np.float32), window_stride=0)
