"""Training shards made from real motion: LivePortrait templates plus features of real speech.

The templates (``lp_template_*.pkl``) hold per-frame ``exp``, ``scale``, ``t`` and a rotation matrix
extracted from real videos by the real model. Shards store the extractor's raw outputs, so the
rotation is turned back into angles and each angle into 66 bin logits whose softmax expectation is
that angle. The templates carry no canonical keypoints, so ``kp`` is a fixed array (the trainer
never reads it). Motion is resampled to 25 fps. Audio features are log mel filterbank energies of
real speech at 25 frames per second: small, frame-aligned and really derived from the audio.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from python_speech_features import logfbank

from shards.pose import degrees_to_logits, matrix_to_degrees
from shards.format import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from shards.vector import motion_to_vector
from shards.writer import ShardWriter

TEMPLATES = ("d5", "d7", "talking")
SPEECH = ("joyvasa_001.wav", "joyvasa_006.wav", "speech_2spk_30s.wav")


def _resample(values: np.ndarray, src_fps: float, n_out: int) -> np.ndarray:
    """Linear interpolation along time of (T, ...) to ``n_out`` frames at 25 fps."""
    src_t = np.arange(values.shape[0]) / src_fps
    out_t = np.arange(n_out) / FPS
    flat = values.reshape(values.shape[0], -1)
    cols = [np.interp(out_t, src_t, flat[:, j]) for j in range(flat.shape[1])]
    return np.stack(cols, axis=1).reshape(n_out, *values.shape[1:]).astype(np.float32)


def template_motion(path: str | Path) -> dict[str, np.ndarray]:
    """Raw extractor-style arrays at 25 fps from a LivePortrait motion template."""
    with open(path, "rb") as f:
        template = pickle.load(f)
    frames = template["motion"]
    fps = float(template.get("output_fps", FPS))
    rot = np.stack([np.asarray(m.get("R", m.get("R_d")), np.float32).reshape(3, 3) for m in frames])
    angles = np.stack(matrix_to_degrees(rot), axis=1)  # (T, 3) pitch, yaw, roll
    n_out = int(np.floor((len(frames) - 1) / fps * FPS)) + 1
    exp = _resample(np.stack([np.asarray(m["exp"], np.float32).reshape(21, 3) for m in frames]), fps, n_out)
    scale = _resample(np.stack([np.asarray(m["scale"], np.float32).reshape(1) for m in frames]), fps, n_out)
    t = _resample(np.stack([np.asarray(m["t"], np.float32).reshape(3) for m in frames]), fps, n_out)
    angles = _resample(angles, fps, n_out)
    kp = np.tile(np.random.default_rng(0).normal(scale=0.1, size=(1, 21, 3)).astype(np.float32),
                 (n_out, 1, 1))
    return {"kp": kp, "exp": exp, "scale": scale, "t": t,
            "pitch": degrees_to_logits(angles[:, 0]), "yaw": degrees_to_logits(angles[:, 1]),
            "roll": degrees_to_logits(angles[:, 2])}


def speech(path: str | Path, n_frames: int, offset_s: float = 0.0) -> np.ndarray:
    """``n_frames`` worth of int16 16 kHz mono speech, looped if the file is short."""
    audio, rate = sf.read(path, dtype="int16")
    if audio.ndim > 1:
        audio = audio[:, 0]
    assert rate == SAMPLE_RATE, f"{path}: {rate} Hz"
    start = int(offset_s * SAMPLE_RATE)
    need = n_frames * SAMPLES_PER_FRAME
    reps = (start + need) // len(audio) + 1
    return np.tile(audio, reps)[start:start + need]


def speech_features(audio: np.ndarray, n_frames: int, dim: int) -> np.ndarray:
    """Log mel filterbank (n_frames, dim) at 25 fps: one 40 ms hop per video frame."""
    feat = logfbank(audio.astype(np.float32) / 32768.0, samplerate=SAMPLE_RATE, winlen=0.04,
                    winstep=1.0 / FPS, nfilt=dim, nfft=1024)
    feat = feat[:n_frames]
    if feat.shape[0] < n_frames:
        feat = np.concatenate([feat, np.repeat(feat[-1:], n_frames - feat.shape[0], 0)])
    return feat.astype(np.float32)


def fixture_clips(media: Path, audio_dim: int = 16, n_clips: int = 3, split: str = "train",
                  dataset: str = "templates", start_index: int = 0) -> list[dict[str, Any]]:
    """``n_clips`` clips pairing the templates with real speech segments (cycled)."""
    clips = []
    for i in range(start_index, start_index + n_clips):
        motion = template_motion(media / f"lp_template_{TEMPLATES[i % len(TEMPLATES)]}.pkl")
        n = motion["exp"].shape[0]
        audio = speech(media / SPEECH[i % len(SPEECH)], n, offset_s=2.0 * (i // len(SPEECH)))
        clips.append({"key": f"{dataset}-{split}-{i:03d}", "motion": motion,
                      "audio_feat": speech_features(audio, n, audio_dim), "audio": audio,
                      "meta": {"split": split, "dataset": dataset, "fps": FPS, "clip_id": f"{i}"}})
    return clips


def compute_stats(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """The pipeline's stats.json content, from the training clips given."""
    train = [c for c in clips if c["meta"]["split"] == "train"]
    vec = np.concatenate([motion_to_vector(c["motion"]) for c in train]).astype(np.float64)
    feat = np.concatenate([np.asarray(c["audio_feat"], np.float16).astype(np.float64) for c in train])
    return {"format_version": 1, "split": "train", "n_frames": int(vec.shape[0]), "n_clips": len(train),
            "vector": {"dim": int(vec.shape[1]), "mean": vec.mean(0).tolist(), "std": vec.std(0).tolist(),
                       "min": vec.min(0).tolist(), "max": vec.max(0).tolist()},
            "audio_feat": {"dim": int(feat.shape[1]), "mean": feat.mean(0).tolist(),
                           "std": feat.std(0).tolist()}}


def write_dataset(out: Path, clips: list[dict[str, Any]], clips_per_shard: int = 2,
                  stats: dict[str, Any] | None = None) -> list[Path]:
    """Write ``out/shards/shard-*.tar`` and ``out/stats.json`` like the pipeline's output layout."""
    shard_dir = out / "shards"
    for index in range(0, len(clips), clips_per_shard):
        with ShardWriter(shard_dir, index // clips_per_shard) as writer:
            for clip in clips[index:index + clips_per_shard]:
                writer.write(clip["key"], clip["motion"], clip["audio_feat"], clip["audio"], clip["meta"])
    (out / "stats.json").write_text(json.dumps(stats or compute_stats(clips)))
    return sorted(shard_dir.glob("*.tar"))
