"""SyncNet lip-sync scores (offset, Sync-C, Sync-D) computed as syncnet_python computes them.

The network and its loader are ``models.syncnet``; this module is the protocol around it.

Protocol (syncnet_python's ``evaluate``):
- video: 25 fps whole-face crops 224x224 in BGR order, values 0..255 as floats, windows of 5 frames;
- audio: 16 kHz mono int16 samples into ``python_speech_features.mfcc`` with its defaults (13
  coefficients at 100 Hz); video frame v pairs with MFCC columns 4v .. 4v+20;
- n = min(frames, samples // 640) - 5 windows (syncnet_python's count, which leaves the last
  possible window out);
- for each window, L2 distance (``pairwise_distance``, eps 1e-6) to the audio embeddings at shifts
  -vshift..+vshift, zero-padded at the ends; mean over windows per shift;
  offset = vshift - argmin, Sync-D = min, Sync-C = median - min;
- per-window confidence = median of the mean distances - that window's distance at the best shift
  (syncnet_python's ``fconf``, which it then smooths with a 9-tap median filter for display).

``window_stride`` > 1 (an option, not syncnet_python's protocol) runs the lip tower on every k-th
window only, while the cheap audio tower still runs on every window, so offsets keep their
one-frame resolution: the mean distance per shift is then the mean over an evenly spaced subsample
of the windows, an unbiased estimate of the full mean. The lip tower is most of SyncNet's cost,
so stride 2 nearly halves it.

Sign of the offset: a positive offset means the audio leads the video (the sound of a lip movement
arrives ``offset`` frames early); audio that lags the video by k frames gives offset = -k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F

from models.onnx_cpu import placement
from models.syncnet import CROP_SIZE, MFCC_PER_FRAME, MFCC_WINDOW, WINDOW_FRAMES, SyncNet, SyncNetOnnxCpu
from shards.format import SAMPLE_RATE, SAMPLES_PER_FRAME, int16_samples


@dataclass(frozen=True)
class SyncResult:
    """offset (frames; > 0: audio leads), conf (Sync-C), dist (Sync-D), frame_conf (n_windows,),
    dists (2*vshift+1,) mean distance per shift, from -vshift to +vshift audio frames."""

    offset: int
    conf: float
    dist: float
    frame_conf: np.ndarray
    dists: np.ndarray


def score_embeddings(video: np.ndarray | torch.Tensor, audio: np.ndarray | torch.Tensor,
                     vshift: int = 15, windows: np.ndarray | torch.Tensor | None = None) -> SyncResult:
    """The scoring math alone: lip embeddings (m, D) of the windows ``windows`` (m,) (None: every
    window, m == n) against the audio embeddings (n, D) of every window -> SyncResult."""
    video = torch.as_tensor(video, dtype=torch.float32)
    audio = torch.as_tensor(audio, dtype=torch.float32)
    index = torch.arange(len(audio)) if windows is None else torch.as_tensor(windows, dtype=torch.long)
    if video.ndim != 2 or audio.ndim != 2 or video.shape[1] != audio.shape[1] or len(video) == 0 \
            or len(index) != len(video) or (len(index) and int(index.max()) >= len(audio)):
        raise ValueError(f"need lip embeddings (m, D) for m windows of the audio embeddings (n, D), got "
                         f"{tuple(video.shape)} for {len(index)} windows and {tuple(audio.shape)}")
    width = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    candidates = padded[index[:, None] + torch.arange(width)[None, :]]  # (m, width, D)
    dists = F.pairwise_distance(video[:, None, :].expand_as(candidates), candidates)  # (m, width)
    mean_dist = dists.mean(0)
    min_dist, best = torch.min(mean_dist, 0)
    median = torch.median(mean_dist)
    return SyncResult(
        offset=int(vshift - best),
        conf=float(median - min_dist),
        dist=float(min_dist),
        frame_conf=(median - dists[:, best]).numpy(),
        dists=mean_dist.numpy(),
    )


def mfcc_columns(audio: np.ndarray) -> np.ndarray:
    """float32 16 kHz mono in [-1, 1] -> MFCC (13, n_columns), from int16-scaled samples."""
    return python_speech_features.mfcc(int16_samples(audio), SAMPLE_RATE).T


def sync_scores(model: SyncNet | SyncNetOnnxCpu, crops: np.ndarray, audio: np.ndarray, vshift: int = 15,
                batch_size: int = 16, window_stride: int = 1) -> SyncResult:
    """Score lip sync of 25 fps RGB face crops (T, 224, 224, 3) uint8 against 16 kHz mono audio;
    the lip tower sees every ``window_stride``-th window (1: every window, as syncnet_python)."""
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected uint8 RGB crops (T, {CROP_SIZE}, {CROP_SIZE}, 3), got {crops.dtype} {crops.shape}")
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float mono audio (N,), got {audio.dtype} {audio.shape}")
    if window_stride < 1:
        raise ValueError(f"window_stride must be >= 1, got {window_stride}")
    n_windows = min(len(crops), len(audio) // SAMPLES_PER_FRAME) - WINDOW_FRAMES
    if n_windows < 1:
        raise ValueError(f"too short for SyncNet: {len(crops)} frames, {len(audio) / SAMPLE_RATE:.2f} s of audio "
                         f"(needs at least {WINDOW_FRAMES + 1} frames of both)")
    mfcc = torch.from_numpy(mfcc_columns(audio).astype(np.float32))
    device = placement(model)[0]
    windows = np.arange(0, n_windows, window_stride)
    video_emb, audio_emb = [], []
    with torch.inference_mode():
        for start in range(0, n_windows, batch_size):
            stop = min(n_windows, start + batch_size)
            cols = torch.stack([mfcc[:, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_WINDOW]
                                for v in range(start, stop)])[:, None]  # (n, 1, 13, 20)
            audio_emb.append(model.forward_audio(cols.to(device)).cpu())
        # The clip goes to the model's device once and windows are gathered there: each frame is
        # in 5 windows, so stacking them on the host would copy and transfer every frame 5 times.
        clip = torch.from_numpy(crops).to(device)
        offsets = torch.arange(WINDOW_FRAMES, device=device)
        for first in range(0, len(windows), batch_size):
            chosen = torch.from_numpy(windows[first:first + batch_size]).to(device)
            frames = clip[chosen[:, None] + offsets].flip(-1)  # (m, 5, H, W, 3), RGB -> BGR
            batch = frames.permute(0, 4, 1, 2, 3).float()  # (m, 3, 5, H, W)
            video_emb.append(model.forward_video(batch.contiguous()).cpu())
    return score_embeddings(torch.cat(video_emb), torch.cat(audio_emb), vshift, windows)
