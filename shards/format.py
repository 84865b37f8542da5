"""The WebDataset sample format: one sample per kept clip.

A shard is a plain tar file. Each sample's members share the key (the clip id) and are:

  ``<key>.motion.npz``  every raw LivePortrait motion-extractor output at 25 fps, float32:
                        ``kp`` (T, 21, 3), ``exp`` (T, 21, 3), ``pitch``/``yaw``/``roll`` (T, 66)
                        bin logits, ``t`` (T, 3), ``scale`` (T, 1).
  ``<key>.audio_feat.npy``  audio-encoder features aligned to the video frames, float16 (T, D).
  ``<key>.audio.flac``  the clip's audio, 16 kHz mono int16, lossless.
  ``<key>.json``        metadata (source, span, fps, scores, model ids, split, checksums...).

Raw outputs are stored rather than a derived vector so that a change of training representation
never needs the models to run again. ``FORMAT_VERSION`` is bumped on any incompatible change.
"""
from __future__ import annotations

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
SHARD_PATTERN = "shard-{index:06d}.tar"
