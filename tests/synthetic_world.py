"""A synthetic world where the right audio-to-motion answer is known: test and benchmark equipment.

Why: no official weights reach these machines, so whether ``training.run`` learns to move a face
with speech can only be shown on data whose mapping is known. Each clip (10-60 s) is

* audio: real speech from the media folder, cut into segments of 0.4-2.5 s and mixed with pauses
  of 0.15-1.2 s (faint noise) into a new utterance; training clips draw from the first 75 % of
  each recording, validation and held-out clips from the last 25 %, so held-out speech is unseen;
* audio features: log mel filterbank energies per 25 fps frame (``python_speech_features``), or,
  for a wider ``feature_dim``, those energies through a fixed random projection (cheap, yet
  carrying the same information, like the 768-wide encoder features the paper model reads);
* motion, as raw LivePortrait extractor outputs in the shard format:
  - mouth opening: the y offsets of the lip keypoints (``MOUTH_KEYPOINTS``) follow the speech
    energy envelope (frame RMS in dB, scaled to [0, 1], Gaussian-smoothed) ``LAG_FRAMES`` late,
    each with its own gain, plus a little independent noise;
  - every other expression dim, pitch, yaw and roll: independent slow random walks (AR(1) of
    smoothed noise), blinks (short dips of the eye keypoints at random times);
  - scale and translation: slow drifts. None of these depend on the audio.

:func:`mouth_truth` is the known mapping; metrics compare generated mouth dims against it.
``build_world(out, ...)`` writes ``out/shards/*.tar`` with the real :class:`ShardWriter` and
``out/stats.json`` with :class:`shards.stats.DatasetMoments`, as the pipeline does, and returns
the held-out clips (features, audio and true motion) for evaluation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from python_speech_features import logfbank
from scipy.ndimage import gaussian_filter1d

from shards.format import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, int16_samples
from shards.pose import degrees_to_logits
from shards.stats import STATS_FILE, DatasetMoments
from shards.vector import motion_to_vector
from shards.writer import ShardWriter

SPEECH_FILES = ("joyvasa_001.wav", "joyvasa_006.wav", "speech_2spk_30s.wav")
TRAIN_PART = 0.75            # training speech: the first 75 % of each recording
MEL_BANDS = 32               # log mel bands computed from the audio
MOUTH_KEYPOINTS = (14, 17, 19, 20)   # LivePortrait's lip keypoints
MOUTH_GAINS = (0.030, -0.020, 0.025, -0.030)  # y offset at full envelope, per lip keypoint
MOUTH_DIMS = tuple(3 * k + 1 for k in MOUTH_KEYPOINTS)  # their y components in the 70-dim vector
EYE_KEYPOINTS = (11, 13, 15, 16, 18)
LAG_FRAMES = 2               # the mouth follows the envelope 80 ms late
ENVELOPE_SIGMA = 1.5         # Gaussian smoothing of the envelope, in frames
ENVELOPE_DB = (-50.0, -10.0)  # frame RMS (dBFS) mapped to envelope 0 and 1
MOUTH_NOISE = 0.05           # independent noise on the mouth dims, relative to the gain


@dataclass
class WorldClip:
    key: str
    split: str
    audio: np.ndarray          # int16 16 kHz mono
    features: np.ndarray       # (T, feature_dim) float32
    motion: dict[str, np.ndarray]  # raw extractor outputs, shard format
    mouth: np.ndarray          # (T, len(MOUTH_DIMS)) the known mapping's mouth dims

    @property
    def vector(self) -> np.ndarray:
        return motion_to_vector(self.motion)


@dataclass
class World:
    root: Path
    feature_dim: int
    train: list[WorldClip] = field(default_factory=list)
    val: list[WorldClip] = field(default_factory=list)
    held_out: list[WorldClip] = field(default_factory=list)


def load_speech(media: Path) -> list[np.ndarray]:
    """The real recordings as float32 mono at 16 kHz."""
    out = []
    for name in SPEECH_FILES:
        audio, rate = sf.read(media / name, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{name}: {rate} Hz, the world needs {SAMPLE_RATE}")
        out.append(audio[:, 0])
    return out


def mix_utterance(sources: list[np.ndarray], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Speech segments with pauses between them, ``seconds`` long, float32 in [-1, 1]."""
    n_total = int(round(seconds * FPS)) * SAMPLES_PER_FRAME
    parts, n = [], 0
    while n < n_total:
        source = sources[int(rng.integers(len(sources)))]
        length = min(int(rng.uniform(0.4, 2.5) * SAMPLE_RATE), len(source) - 1)
        start = int(rng.integers(0, len(source) - length))
        segment = source[start:start + length] * rng.uniform(0.5, 1.2)
        pause = rng.normal(scale=3e-4, size=int(rng.uniform(0.15, 1.2) * SAMPLE_RATE))
        parts += [segment, pause]
        n += len(segment) + len(pause)
    return np.clip(np.concatenate(parts)[:n_total], -1.0, 1.0).astype(np.float32)


def envelope(audio: np.ndarray) -> np.ndarray:
    """Speech energy per frame in [0, 1]: RMS in dB, scaled, Gaussian-smoothed."""
    frames = audio[: len(audio) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    low, high = ENVELOPE_DB
    return gaussian_filter1d(np.clip((db - low) / (high - low), 0, 1), ENVELOPE_SIGMA, mode="nearest")


def mouth_truth(audio: np.ndarray) -> np.ndarray:
    """The known mapping: (T, 4) lip y offsets, the envelope ``LAG_FRAMES`` late times the gains."""
    env = envelope(audio)
    late = np.concatenate([np.full(LAG_FRAMES, env[0]), env[:-LAG_FRAMES]]) if LAG_FRAMES else env
    return (late[:, None] * np.asarray(MOUTH_GAINS)[None]).astype(np.float32)


def projection(feature_dim: int) -> np.ndarray | None:
    """The fixed random projection from the mel bands to ``feature_dim`` (None: the bands as they are)."""
    if feature_dim == MEL_BANDS:
        return None
    rng = np.random.default_rng(1234)
    return (rng.normal(size=(MEL_BANDS, feature_dim)) / np.sqrt(MEL_BANDS)).astype(np.float32)


def audio_features(audio: np.ndarray, feature_dim: int) -> np.ndarray:
    """(T, feature_dim) float32: log mel energies of each 40 ms frame, projected when wider."""
    n_frames = len(audio) // SAMPLES_PER_FRAME
    mel = logfbank(audio, samplerate=SAMPLE_RATE, winlen=1.0 / FPS, winstep=1.0 / FPS,
                   nfilt=MEL_BANDS, nfft=1024)[:n_frames]
    mel = np.concatenate([mel, np.repeat(mel[-1:], n_frames - len(mel), 0)]) if len(mel) < n_frames else mel
    proj = projection(feature_dim)
    return (mel if proj is None else mel @ proj).astype(np.float32)


def random_walk(n: int, dims: int, std: float, rng: np.random.Generator, smooth: float = 4.0,
                keep: float = 0.985) -> np.ndarray:
    """Slow AR(1) walks of smoothed noise, (n, dims), each with temporal std about ``std``."""
    noise = gaussian_filter1d(rng.normal(size=(n + 200, dims)), smooth, axis=0)
    walk = np.zeros_like(noise)
    for i in range(1, len(noise)):
        walk[i] = keep * walk[i - 1] + noise[i]
    walk = walk[200:]
    return (walk / (walk.std(0, keepdims=True) + 1e-12) * std).astype(np.float32)


def blinks(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) eyelid dips of about 0.2 s at random times, every 2-6 s."""
    out = np.zeros(n, np.float32)
    start = int(rng.uniform(1, 4) * FPS)
    shape = np.array([0.4, 1.0, 1.0, 0.6, 0.2], np.float32)
    while start + len(shape) < n:
        out[start:start + len(shape)] = shape
        start += int(rng.uniform(2, 6) * FPS)
    return out


def world_motion(mouth: np.ndarray, canonical_kp: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Raw extractor outputs (shard format) for one clip whose mouth dims are ``mouth``."""
    n = len(mouth)
    exp = random_walk(n, 63, 0.006, rng).reshape(n, 21, 3)
    for j, k in enumerate(MOUTH_KEYPOINTS):
        exp[:, k, 1] = mouth[:, j] + random_walk(n, 1, MOUTH_NOISE * abs(MOUTH_GAINS[j]), rng)[:, 0]
    blink = blinks(n, rng)
    for k in EYE_KEYPOINTS:
        exp[:, k, 1] += 0.02 * blink
    angles = random_walk(n, 3, 4.0, rng) + rng.normal(0, 3.0, size=3).astype(np.float32)
    scale = 1.6 + random_walk(n, 1, 0.02, rng, keep=0.995)
    t = random_walk(n, 3, 0.015, rng, keep=0.995)
    return {"kp": np.repeat(canonical_kp[None], n, 0), "exp": exp, "scale": scale, "t": t,
            "pitch": degrees_to_logits(angles[:, 0]), "yaw": degrees_to_logits(angles[:, 1]),
            "roll": degrees_to_logits(angles[:, 2])}


def make_clip(key: str, split: str, sources: list[np.ndarray], seconds: float, feature_dim: int,
              canonical_kp: np.ndarray, rng: np.random.Generator) -> WorldClip:
    audio = mix_utterance(sources, seconds, rng)
    mouth = mouth_truth(audio)
    return WorldClip(key, split, int16_samples(audio), audio_features(audio, feature_dim),
                     world_motion(mouth, canonical_kp, rng), mouth)


def build_world(out: str | Path, media: Path, feature_dim: int = MEL_BANDS, n_train: int = 24,
                n_val: int = 4, n_held_out: int = 3, seconds: tuple[float, float] = (10.0, 60.0),
                clips_per_shard: int = 8, seed: int = 0) -> World:
    """Write the world's shards and stats under ``out``; return every clip for evaluation."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    speech = load_speech(media)
    train_speech = [s[: int(len(s) * TRAIN_PART)] for s in speech]
    held_speech = [s[int(len(s) * TRAIN_PART):] for s in speech]
    canonical_kp = np.random.default_rng(7).normal(scale=0.1, size=(21, 3)).astype(np.float32)
    world = World(out, feature_dim)
    for i in range(n_train):
        world.train.append(make_clip(f"world-train-{i:04d}", "train", train_speech,
                                     rng.uniform(*seconds), feature_dim, canonical_kp, rng))
    for i in range(n_val):
        world.val.append(make_clip(f"world-val-{i:04d}", "val", held_speech,
                                   rng.uniform(*seconds), feature_dim, canonical_kp, rng))
    for i in range(n_held_out):
        world.held_out.append(make_clip(f"world-heldout-{i:04d}", "test", held_speech,
                                        rng.uniform(*seconds), feature_dim, canonical_kp, rng))
    written = world.train + world.val
    for index in range(0, len(written), clips_per_shard):
        with ShardWriter(out / "shards", index // clips_per_shard) as writer:
            for clip in written[index:index + clips_per_shard]:
                meta = {"split": clip.split, "dataset": "world", "clip_id": clip.key, "fps": FPS,
                        "speaker": clip.key}
                writer.write(clip.key, clip.motion, clip.features, clip.audio, meta)
    moments = DatasetMoments()
    for clip in world.train:
        # the shards store float16 features: the statistics describe what the trainer reads
        moments.add_sample(clip.motion, clip.features.astype(np.float16).astype(np.float32))
    (out / STATS_FILE).write_text(json.dumps(moments.document()))
    return world


def world_std(clips: list[WorldClip]) -> np.ndarray:
    """Per-dim temporal std of the world's 70-dim motion, averaged over clips."""
    return np.mean([c.vector.std(0) for c in clips], axis=0)

