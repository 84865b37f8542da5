"""Cheap filters, before any model: clip duration (before decoding), audio present and not silent
(after decoding the audio). Both report as stage ``cheap``."""
from __future__ import annotations

from filters.cheap import audio_rms_db, check_audio, check_duration
from pipeline.clip import Clip
from pipeline.stages.base import Filter


class DurationFilterStage(Filter):
    name = "cheap"
    sections = ("duration",)

    def process(self, clip: Clip) -> None:
        limits = self.settings("duration")
        clip.scores["duration_s"] = clip.duration_s
        self.verdict(clip, "duration", check_duration(clip.duration_s, float(limits["min_s"]),
                                                      float(limits["max_s"])))


class AudioFilterStage(Filter):
    name = "cheap"
    sections = ("audio",)

    def process(self, clip: Clip) -> None:
        if clip.audio is None:
            # Without audio there is nothing for lip sync or audio features to work on.
            clip.reject(self.name, "no_audio", "the file has no audio stream")
            return
        clip.scores["audio_rms_db"] = audio_rms_db(clip.audio)
        self.verdict(clip, "audio", check_audio(True, clip.scores["audio_rms_db"],
                                                float(self.settings("audio")["min_rms_db"])))
