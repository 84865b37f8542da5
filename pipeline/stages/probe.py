"""Probe stage: open the file and read duration, frame rate, streams and rotation.

Runs on whole-video records. A file that cannot be opened, or holds no video stream, is rejected
here with the probe's reason (``not_media``, ``truncated``, ``no_video``...), before any decoding;
so is a video without audio when the audio filter drops such clips (every one of its clips would
be rejected anyway).
"""
from __future__ import annotations

from pipeline.clip import Clip, info_from_probe
from pipeline.probe import ProbeError, probe
from pipeline.stages.base import DROP, Stage


class ProbeStage(Stage):
    name = "probe"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.timeout_s = float(cfg["probe"]["timeout_s"])
        self.drop_without_audio = cfg["filters"]["audio"].get("mode", DROP) == DROP

    def process(self, clip: Clip) -> None:
        try:
            result = probe(clip.source, timeout_s=self.timeout_s)
        except ProbeError as exc:
            self.media_rejection(clip, exc)
            return
        clip.info = info_from_probe(result)
        if not clip.info.has_audio and self.drop_without_audio:
            clip.reject("cheap", "no_audio", "the file has no audio stream")
