"""The WebDataset sample format: one sample per kept clip.

A shard is a plain tar file. Each sample's members share the key (the clip id) and are:

  ``<key>.motion.npz``  every raw LivePortrait motion-extractor output at 25 fps, float32:
                        ``kp`` (T, 21, 3), ``exp`` (T, 21, 3), ``pitch``/``yaw``/``roll`` (T, 66)
                        bin logits, ``t`` (T, 3), ``scale`` (T, 1).
  ``<key>.audio_feat.npy``  audio-encoder features aligned to the video frames, float16 (T, D).
  ``<key>.audio.flac``  the clip's audio, 16 kHz mono int16, lossless.
  ``<key>.json``        metadata (clip and video ids, span, fps, scores, model ids, split...;
                        not the source path, which the manifests hold).

Raw outputs are stored rather than a derived vector so that a change of training representation
never needs the models to run again. ``FORMAT_VERSION`` is bumped on any incompatible change.
"""
from __future__ import annotations

import re

import numpy as np

FORMAT_VERSION = 1
FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

MOTION_SHAPES: dict[str, tuple[int, ...]] = {
    "kp": (21, 3),
    "exp": (21, 3),
    "pitch": (66,),
    "yaw": (66,),
    "roll": (66,),
    "t": (3,),
    "scale": (1,),
}
MEMBERS = ("motion.npz", "audio_feat.npy", "audio.flac", "json")
INT16_SCALE = 32768.0  # float audio in [-1, 1] <-> int16 samples (the scaling SyncNet's MFCC expects)
# A shard's name: ``shard-<chunk, 6 digits>-<split>.tar`` (train or val: a shard holds one split),
# and ``-<part, 2 digits>`` before ``.tar`` once a chunk's shard of that split rolls over. Outputs
# written before shards were split by split name them without the split and mix both splits; readers
# accept both. The writer makes names with ``shard_name``; readers match them with this.
SHARD_NAME_RE = re.compile(r"^shard-(?P<chunk>\d{6})(?:-(?P<split>train|val))?(?:-(?P<part>\d{2}))?\.tar$")


def shard_name(chunk: int, part: int = 0, split: str | None = None) -> str:
    """The name of part ``part`` of chunk ``chunk``'s shard of ``split`` (part 0 has no suffix;
    ``split=None`` gives the older, mixed name)."""
    return (f"shard-{chunk:06d}" + (f"-{split}" if split else "") + (f"-{part:02d}" if part else "")
            + ".tar")


def shard_split(name: str) -> str | None:
    """The split a shard's name says (``train``/``val``), or None for an older, mixed shard."""
    match = SHARD_NAME_RE.match(name.rsplit("/", 1)[-1])
    return match["split"] if match else None


def int16_samples(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 samples (x * 32768, rounded and clipped), as stored in shards."""
    scaled = np.round(np.asarray(audio, dtype=np.float64) * INT16_SCALE)
    return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)
