"""Decode stage: the clip's audio at 16 kHz mono, exactly 640 samples per 25 fps frame.

Video frames are not decoded here: the face stage streams them in bounded chunks, so no clip ever
holds its full-resolution frames in memory.
"""
from __future__ import annotations

from pipeline.clip import Clip
from pipeline.decode import DecodeError, decode_audio
from pipeline.stages.base import Stage
from shards.format import SAMPLE_RATE


class DecodeAudioStage(Stage):
    name = "decode"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.timeout_s = float(cfg["decode"]["timeout_s"])

    def process(self, clip: Clip) -> None:
        if not clip.info.has_audio:
            return  # the cheap filter records "no_audio"
        try:
            audio = decode_audio(clip.source, clip.start_s, clip.end_s, sample_rate=SAMPLE_RATE,
                                 timeout_s=self.timeout_s)
        except DecodeError as exc:
            self.media_rejection(clip, exc)
            return
        if len(audio) != clip.n_samples:
            raise ValueError(f"decoded {len(audio)} audio samples, expected {clip.n_samples}")
        clip.audio = audio
