"""The record that flows through the pipeline's stages: one candidate clip (or one whole video).

A video enters as a ``Clip`` without a span (``start_s is None``); the probe stage fills its
``info`` and the shot stage replaces it by its candidate clips. Every later stage adds fields or
marks a rejection (stage, reason, error) and never raises for a bad clip, so every candidate ends as
exactly one manifest row. Big arrays (face crops, audio, features) travel with the clip as one array
each, never one row per frame; ``summary()`` drops them for the small status messages the driver
reads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.decode import n_frames as frames_in_span
from pipeline.inputs import clip_id as span_id
from shards.format import FPS, SAMPLES_PER_FRAME

ARRAY_FIELDS = ("audio", "lp_crops", "sync_crops", "motion", "audio_feat")


@dataclass
class VideoInfo:
    """What the probe found about the input file (a plain copy of the probe result)."""

    duration_s: float
    fps: float
    is_vfr: bool
    width: int
    height: int
    rotation: int
    has_video: bool
    has_audio: bool
    audio_rate: int | None = None
    audio_channels: int | None = None


@dataclass
class Rejection:
    stage: str
    reason: str
    error: str | None = None


@dataclass
class Clip:
    """One candidate clip of one input video; ``start_s``/``end_s`` are None for the whole video."""

    source: str
    video_id: str
    chunk: int
    dataset: str | None = None
    language: str | None = None
    speaker: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    info: VideoInfo | None = None
    # Filled by the stages, in order.
    audio: np.ndarray | None = None          # (n_frames * 640,) float32, 16 kHz mono
    lp_crops: np.ndarray | None = None       # (T, 256, 256, 3) uint8 RGB, LivePortrait crop
    sync_crops: np.ndarray | None = None     # (T, 224, 224, 3) uint8 RGB, whole-face crop
    motion: dict[str, np.ndarray] | None = None  # raw motion-extractor outputs, (T, ...)
    audio_feat: np.ndarray | None = None     # (T, D) float32
    crop_backend: str | None = None          # what placed the LivePortrait crop (pipeline.faces)
    face_embedding: np.ndarray | None = None  # (D,) float32 identity embedding of the clip's face
    identity_backend: str | None = None      # the model that made it (models.face_identity)
    scores: dict[str, float] = field(default_factory=dict)  # SCORE_COLUMNS without "score_"
    rejection: Rejection | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    frames_in: dict[str, int] = field(default_factory=dict)  # frames each stage processed

    @property
    def is_video(self) -> bool:
        return self.start_s is None

    @property
    def clip_id(self) -> str:
        if self.start_s is None or self.end_s is None:
            raise ValueError("a whole-video record has no clip id")
        return span_id(self.video_id, self.start_s, self.end_s)

    @property
    def duration_s(self) -> float:
        if self.start_s is None or self.end_s is None:
            return self.info.duration_s if self.info else 0.0
        return self.end_s - self.start_s

    @property
    def n_frames(self) -> int:
        """Frames at 25 fps; the decoders return exactly this many frames and n*640 samples."""
        if self.start_s is None or self.end_s is None:
            return frames_in_span(0.0, self.duration_s, FPS)
        return frames_in_span(self.start_s, self.end_s, FPS)

    @property
    def n_samples(self) -> int:
        return self.n_frames * SAMPLES_PER_FRAME

    @property
    def kept(self) -> bool:
        return self.rejection is None

    def reject(self, stage: str, reason: str, error: str | None = None) -> None:
        """Mark the clip rejected; the first rejection wins."""
        if self.rejection is None:
            self.rejection = Rejection(stage, reason, error)
            self.drop_arrays()

    def drop_arrays(self, names: tuple[str, ...] = ARRAY_FIELDS) -> None:
        for name in names:
            setattr(self, name, None)

    def summary(self) -> "Clip":
        """A copy without the big arrays: what the driver needs to decide and to write a row."""
        return dataclasses.replace(self, **{name: None for name in ARRAY_FIELDS},
                                   scores=dict(self.scores), timings=dict(self.timings),
                                   frames_in=dict(self.frames_in))

    def span_clip(self, start_s: float, end_s: float) -> "Clip":
        """A candidate clip of this video over [start_s, end_s)."""
        return Clip(source=self.source, video_id=self.video_id, chunk=self.chunk,
                    dataset=self.dataset, language=self.language, speaker=self.speaker,
                    start_s=float(start_s), end_s=float(end_s), info=self.info)

    def add_time(self, stage: str, seconds: float, frames: int = 0) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        if frames:  # a clip meets each stage name once, with its own frames
            self.frames_in[stage] = max(self.frames_in.get(stage, 0), frames)


def info_from_probe(result: Any) -> VideoInfo:
    """Copy the fields the pipeline uses from a probe result (any object with these attributes)."""
    names = [f.name for f in dataclasses.fields(VideoInfo)]
    return VideoInfo(**{name: getattr(result, name, None) for name in names})
